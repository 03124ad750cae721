#pragma once
// Files of `kvsim analyze --out DIR`:
//   key_stats.csv   layer, head, kv_head, eval, n_queries, n_keys, spearman, mass_frac_90, entropy,
//                   entropy_norm, span_mass          (one row per layer x query head x eval set)
//   key_recall.csv  layer, head, eval, top, top_tokens, recall   (one row per ... x top-N)
//   summary.json    written by the CLI (trace, protocol, per-layer means, timings)
#include <string>
#include <vector>

#include "report/json_reader.h"
#include "report/key_stats.h"

namespace kvsim::report {

// The files of `kvsim analyze --out DIR`, summary.json (the marker) last.
inline const std::vector<std::string> kAnalyzeOutputs = {"key_stats.csv", "key_recall.csv", "summary.json"};

std::string key_stats_csv(const std::vector<HeadKeyStats>& stats);
std::string key_recall_csv(const std::vector<HeadKeyStats>& stats, const std::vector<TopN>& top);

struct RecallRow {
  int layer = 0, head = 0;
  std::string eval, top;
  long long top_tokens = 0;
  double recall = 0;
};

struct AnalyzeOutput {
  std::string dir;
  JsonValue summary;
  std::vector<HeadKeyStats> stats;  // recall left empty; see recall
  std::vector<RecallRow> recall;
  std::vector<int> layers;          // sorted
};

bool is_analyze_output(const std::string& dir);  // has key_stats.csv
AnalyzeOutput load_analyze_output(const std::string& dir);

}  // namespace kvsim::report
