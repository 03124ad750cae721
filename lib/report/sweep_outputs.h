#pragma once
// Typed view of a `kvsim sweep --out DIR` folder: sweep.json, and the per-trace replay folders of
// the traces that finished, plus the cross-trace statistics the report shows.
#include <string>
#include <vector>

#include "report/json_reader.h"
#include "report/replay_outputs.h"

namespace kvsim::report {

struct SweepTrace {
  std::string label, path, status, error;
  long long units = 0;
  double seconds = 0;
};

struct SweepOutput {
  std::string dir;
  JsonValue sweep;                   // sweep.json
  std::vector<SweepTrace> traces;    // every trace of the study, in order
  std::vector<ReplayOutput> replays; // the finished ones, in the same order
  std::vector<std::string> labels;   // label of each replay
};

bool is_sweep_output(const std::string& dir);  // has sweep.json
SweepOutput load_sweep_output(const std::string& dir);

// One rule and budget over the traces of one model: the spread of each trace's mean over layers.
// Traces of different models are never averaged together (their output scales differ by orders
// of magnitude); rel_pert_l1 is the scale-free perturbation to compare across models.
struct CrossTraceStats {
  std::string model;  // "name (L layers, H/Hkv heads, d)" from the trace's summary
  std::string rule, budget;
  int traces = 0;
  double budget_tokens_mean = 0;
  double budget_x = 0;  // the budget as typed: a kept fraction (f, 1 - cr) or tokens (budget_axis says)
  double pert_l1_mean = 0, pert_l1_std = 0, pert_l1_min = 0, pert_l1_max = 0;
  double rel_pert_l1_mean = 0, rel_pert_l1_std = 0, rel_pert_l1_min = 0, rel_pert_l1_max = 0;
  double retained_mass_mean = 0, retained_mass_std = 0;
  // Bound tightness: per trace the median over head rows of pert_l1 / bound_critical.
  double tightness_mean = 0, tightness_std = 0;
};
// The x axis of the budgets: "kept fraction (as typed)" when every budget is a fraction or cr=,
// "tokens per head (as typed)" when every one is a token count, else the mean kept fraction of n_c.
std::string budget_axis(const std::vector<CrossTraceStats>& stats);
std::vector<CrossTraceStats> cross_trace_stats(const SweepOutput& s);

}  // namespace kvsim::report
