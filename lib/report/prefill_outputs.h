#pragma once
// A `kvsim prefill --out DIR` folder as the report reads it: summary.json, metrics.csv (layer,
// head, fusion, ..., block_recall, pair_reduction; empty cells for dense layers), locality.csv
// (layer, head, delta, jaccard, pairs) and, when present, bench.json from
// `kvsim prefill --bench --json DIR/bench.json` (the measured kernel speed-up).
#include <string>
#include <vector>

#include "report/csv_reader.h"
#include "report/json_reader.h"

namespace kvsim::report {

struct PrefillOutput {
  std::string dir;
  JsonValue summary;
  std::vector<std::pair<std::string, CsvTable>> tables;  // file name -> table, in a fixed order
  JsonValue bench;                                       // null when bench.json is absent
  const CsvTable* table(const std::string& name) const;
};

PrefillOutput load_prefill_output(const std::string& dir);

}  // namespace kvsim::report
