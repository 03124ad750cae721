#pragma once
// kvsim analyze as a library call: KeyDiff's premise statistics of a trace (report/key_stats.h)
// as columnar tables in memory and/or key_stats.csv, key_recall.csv and summary.json in out_dir
// (written atomically, summary.json last). The CLI and the Python API call it.
#include <string>

#include "core/columns.h"
#include "core/json.h"

namespace kvsim::report {

struct AnalyzeOptions {
  std::string trace_path, out_dir;
  std::string layers = "all";
  std::string compression_point = "agnostic";  // agnostic | aware
  long long window = 32;
  std::string top = "0.05,0.1,0.2,0.4";
  std::string command;   // for summary.json
  bool collect = false;  // keep the tables in memory
};

struct AnalyzeResult {
  ColumnTable key_stats, key_recall;  // with collect
  Json summary;
  std::string table;  // the short table the CLI prints
};

// Throws kvsim::Error naming the option or the trace field.
AnalyzeResult run_analysis(const AnalyzeOptions& opt);

}  // namespace kvsim::report
