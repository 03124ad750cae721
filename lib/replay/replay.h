#pragma once
// The replay driver: trace x rules x budgets -> metrics.csv, metrics_per_query.csv,
// summary.json, selection.h5 (notes/outputs.md). One layer is resident at a time; all stored
// query rows are loaded (rules may read any prompt query, e.g. H2O reads all of them).
// Every output is written to "<name>.partial" and renamed only when the whole run succeeded.
#include <ostream>
#include <string>

#include "attention/layer_cache.h"
#include "replay/protocol.h"

namespace kvsim {

struct ReplayOptions {
  std::string trace_path;
  std::string rules;    // "spec;spec"
  std::string budgets;  // "0.1,0.2,512"
  std::string out_dir;
  std::string layers = "all", heads = "all";  // heads filters the head rows; layer rows use every head
  ProtocolOptions protocol;
  bool per_query = false, save_selection = false;
  int threads = 0;                // 0: OpenMP default
  NormKind nu = NormKind::l1;     // value norm of the bounds: exact l1 or the cheap upper bound
  std::string nu_cache_dir;       // on-disk cache of exact value norms (attention/norm_cache.h); "": none
  std::string command;            // argv joined, for summary.json
};

// Runs the replay; prints the short result table to `table`. Throws kvsim::Error.
void run_replay(const ReplayOptions& opt, std::ostream& table);

}  // namespace kvsim
