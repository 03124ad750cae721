#pragma once
// Files of `kvsim analyze --out DIR` (report/analyze_run.h): key_stats.csv and key_recall.csv
// (columns declared below), summary.json (trace, protocol, means, timings); and their reader.
#include <string>
#include <vector>

#include "core/columns.h"
#include "report/json_reader.h"
#include "report/key_stats.h"

namespace kvsim::report {

// The files of `kvsim analyze --out DIR`, summary.json (the marker) last.
inline const std::vector<std::string> kAnalyzeOutputs = {"key_stats.csv", "key_recall.csv", "summary.json"};

const TableSchema& key_stats_schema();   // key_stats.csv
const TableSchema& key_recall_schema();  // key_recall.csv
void write_key_stats(RowSink& out, const std::vector<HeadKeyStats>& stats);
void write_key_recall(RowSink& out, const std::vector<HeadKeyStats>& stats, const std::vector<TopN>& top);

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
