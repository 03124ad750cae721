#pragma once
// Output files of `kvsim prefill TRACE --out DIR` (mirroring replay's, docs/outputs.md):
//   metrics.csv   one row per (layer, head, fusion); head = -1 is the layer row
//   locality.csv  layer, head, delta, jaccard, pairs
//   locality_shuffled.csv  layer, head, jaccard, pairs (the shuffled baseline, rules doc 4.4 a)
//   summary.json  config, segment counts, aggregates, timings, peak RSS (written last)
// and the JSON of `kvsim prefill --bench --json FILE`. The folder follows core/output_folder.h.
#include <string>
#include <vector>

#include "core/columns.h"
#include "prefill/prefill_bench.h"
#include "prefill/prefill_run.h"

namespace kvsim {
class OutputFolder;
}

namespace kvsim::prefill {

inline const std::vector<std::string> kPrefillOutputs = {"metrics.csv", "locality.csv", "locality_shuffled.csv",
                                                         "summary.json"};

// The tables, declared once (core/columns.h), and their rows to any sink.
const TableSchema& prefill_metrics_schema();    // metrics.csv ("prefill/metrics.csv" among the tables)
const TableSchema& locality_schema();           // locality.csv
const TableSchema& locality_shuffled_schema();  // locality_shuffled.csv
void write_metrics(RowSink& out, const PrefillRunResult& res);
void write_locality(RowSink& out, const PrefillRunResult& res);
void write_locality_shuffled(RowSink& out, const PrefillRunResult& res);

// Means over (layer, head) of J(delta) and of the shuffled baseline, for tables and summaries.
struct LocalityMeans {
  double j1 = 0, shuffled = 0;
  i64 heads = 0;
};
LocalityMeans locality_means(const PrefillRunResult& res);
double locality_mean_at(const PrefillRunResult& res, i64 delta, i64* heads = nullptr);
std::string summary_json(const PrefillRunResult& res, const PrefillRunOptions& opt, const std::string& command);
void write_prefill_outputs(OutputFolder& folder, const PrefillRunResult& res, const PrefillRunOptions& opt,
                           const std::string& command);

// The short table `kvsim prefill` prints (per layer and variant, means, locality).
std::string run_table(const PrefillRunResult& res);

// kvsim prefill TRACE: run_prefill_trace, with the files written into out_dir when it is not empty
// (locked for the run, published atomically), and a note on stderr when nothing was sparsified.
PrefillRunResult run_prefill(const std::string& trace, const PrefillRunOptions& opt, const std::string& out_dir,
                             const std::string& command);

std::string bench_json(const std::vector<BenchRow>& rows, const BenchOptions& opt, const std::string& command);

// Mean over sparse layers of the layer rows of one fusion variant (for tables and summaries).
struct VariantMeans {
  std::string variant;
  int layers = 0;
  double retained = 0, retained_min = 1, pert_l1 = 0, pert_l2 = 0, rel_l2 = 0, recall = 0, pair_reduction = 0;
};
std::vector<VariantMeans> variant_means(const PrefillRunResult& res);

}  // namespace kvsim::prefill
