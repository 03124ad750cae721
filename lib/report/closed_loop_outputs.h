#pragma once
// Typed view of a kvsim-closed-loop --out folder (tools/kvsim_dump/closed_loop.py):
// offline_vs_closed.csv (one row per rule, budget and mode), closed_loop.json (command, model,
// KeyDiff simulated-vs-true gap) and the offline replay in replay/.
#include <string>
#include <vector>

#include "report/json_reader.h"
#include "report/replay_outputs.h"

namespace kvsim::report {

struct ClosedLoopRun {
  std::string rule, budget, mode;  // mode: oneshot | blockwise | decode
  double kept_tokens = 0;
  double offline_pert_l1 = 0, offline_rel_pert_l1 = 0, offline_bound_critical = 0, offline_bound_ada = 0,
         offline_retained_mass = 0;
  double kl_mean = 0, token_agreement = 0, delta_logprob = 0, hidden_drift_last = 0, free_agreement = 0,
         needle_recall = 0;
};

struct ClosedLoopOutput {
  std::string dir;
  JsonValue doc;  // closed_loop.json
  std::vector<ClosedLoopRun> runs;
  ReplayOutput replay;  // replay/
};

bool is_closed_loop_output(const std::string& dir);  // has closed_loop.json and offline_vs_closed.csv
ClosedLoopOutput load_closed_loop_output(const std::string& dir);

// Spearman rank correlation of an offline column against a closed-loop one over the one-shot and
// decode runs (the replay protocol's setting): over all of them, and the mean of the per-budget
// correlations across rules. Columns are ClosedLoopRun members.
struct RankCorrelation {
  std::string offline, closed;
  int n = 0;
  double all = 0, within_budget = 0;
};
std::vector<RankCorrelation> closed_loop_correlations(const ClosedLoopOutput& c);

}  // namespace kvsim::report
