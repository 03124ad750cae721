#pragma once
// Typed view of one `kvsim replay --out DIR` folder: metrics.csv rows and summary.json
// (schemas in the architecture note, section 6, and docs/outputs.md).
#include <string>
#include <vector>

#include "report/json_reader.h"

namespace kvsim::report {

struct MetricRow {
  std::string rule, budget, eval;
  double budget_tokens = 0, kept_tokens = 0, cache_ratio = 0;
  int layer = 0, head = -1;  // head -1: the whole layer
  long long n_queries = 0;
  double retained_mass = 0, retained_mass_min = 0;
  double pert_l1 = 0, pert_l1_max = 0, pert_l2 = 0, pert_l2_max = 0;
  double rel_pert_l1 = 0, rel_pert_l2 = 0;
  double bound_ada = 0, bound_critical = 0;
};

struct ReplayOutput {
  std::string dir;
  JsonValue summary;
  std::vector<MetricRow> rows;
  std::vector<std::string> rules;    // in order of first appearance in metrics.csv
  std::vector<std::string> budgets;  // in order of first appearance
  std::vector<int> layers;           // sorted
  std::string eval;                  // "queries" when present, else "window": what the analyses use
  std::vector<int> heads;            // distinct head indices >= 0, sorted (replay --heads may subset)
};

// Reads DIR/metrics.csv and DIR/summary.json. Throws kvsim::Error naming the file, the line and
// the column on any malformed content.
ReplayOutput load_replay_output(const std::string& dir);
std::vector<MetricRow> parse_metrics_csv(const std::string& path);

bool is_replay_output(const std::string& dir);  // has metrics.csv and summary.json

}  // namespace kvsim::report
