#pragma once
// What `kvsim bench` measures, as a library: synthetic Llama-8B-shaped layers generated in memory
// (32 heads, 8 KV heads, head_dim 128, hidden 4096, 64 evaluation queries after an observation
// window of 64) and the timed pieces of a replay on them: the attention core, plain OpenBLAS
// sgemm on the same shapes, one full replay layer, and each rule's select() alone.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attention/layer_cache.h"
#include "attention/layer_reference.h"
#include "rules/rule.h"
#include "rules/window_attention.h"
#include "core/types.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim::bench {

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128, kHidden = 4096, kEval = 64, kWindow = 64;

struct BenchLayer {
  TraceMeta meta;
  LayerData data;
  i64 n_c = 0;
  std::vector<i64> eval_rows, window_rows;
};

// Context of S - 64 tokens then 64 question tokens; stored queries: the 64-token observation
// window and the 64 evaluation queries. Deterministic (counter-hash random values).
BenchLayer make_layer(i64 S);

// What a rule sees of the bench layer (as kvsim replay builds it per layer); the cache and memo
// must outlive the result.
RuleInput bench_rule_input(const BenchLayer& b, LayerCache& cache, WindowAttentionMemo& window_memo);

// Uniform(-a, a) with unit variance from a counter hash: parallel and deterministic.
void fill_random(float* x, i64 n, std::uint64_t seed, float scale);

// Best wall time of `reps` runs with `threads` OpenMP threads: the attention core (full causal
// attention + head outputs of the evaluation queries), and plain OpenBLAS on the same shapes
// (per KV group QK^T [G*n x d]x[d x S] and PV [G*n x S]x[S x d]).
double time_core(const BenchLayer& b, int threads, int reps, std::size_t* tiles_peak = nullptr);
double time_sgemm(const BenchLayer& b, int threads, int reps);

// The replay core's pieces at one length S: attention core (threads, its CPU time per thread,
// and 1 thread), sgemm on the same shapes, the three value norms (exact L1 on all heads up to 32K
// tokens, else on 4 heads, scaled), and the metrics of one 20% selection.
struct LengthTiming {
  i64 S = 0;
  std::size_t prob_tiles_peak_bytes = 0;  // attention probabilities alive at once in the core
  double core_s = 0, core_cpu_s = 0, core1_s = 0, sgemm_s = 0, nu_exact_s = 0, nu_upper_s = 0, nu_l2_s = 0,
         metrics_s = 0;
  int nu_exact_heads = 0;
  // GEMM flops the metrics of that selection cannot avoid: per head and query the kept or the
  // evicted columns (the narrower) times the value rows, and delta through W_o^h (2 n d D per head).
  double metrics_floor_flops = 0;
  // The budgets of one rule as a replay measures them: five nested kept sets (10% ... 50% of one
  // hashed ranking) in one measure_perturbations call; seconds and floor flops per selection.
  double metrics_batch_s = 0, metrics_batch_floor_flops = 0;
  double flops() const { return 4.0 * kHeads * kEval * double(S) * kDim; }  // of the attention core
};
LengthTiming time_length(i64 S, int threads, int reps);

// The best sgemm rate this BLAS reaches here: 2048^3, outside any parallel region (the BLAS
// uses its own threads), best of 3; GFLOP/s.
double best_sgemm_gflops();

// Is BLAS single-threaded inside an OpenMP parallel region? One 1024^3 sgemm outside any region
// (OpenBLAS may use every thread) vs alone on thread 0 of a 2-thread region (best of 3 each).
struct BlasThreading {
  double outside_seconds = 0, inside_seconds = 0;
};
BlasThreading probe_blas_threading();

// One layer of a full replay as kvsim replay runs it (every rule selects the budgets 0.1..0.5,
// then measure_rules measures all selections in one walk over the KV groups), with the wall time
// of each rule's select() (all budgets) apart.
struct ReplayLayerTiming {
  double seconds = 0, metrics_total = 0;
  std::vector<std::pair<std::string, double>> select_seconds;   // rule spec -> select() wall time
  // rule spec -> its budgets' metrics alone (measure_perturbations with the layer's probabilities
  // held), timed after the replay and outside `seconds`; only with per_rule_metrics.
  std::vector<std::pair<std::string, double>> metrics_seconds;
};
// warm: the value norms are computed before the clock starts (a replay whose nu cache holds the
// layer reads them from disk instead); per_rule_metrics: also time each rule's metrics alone.
ReplayLayerTiming time_replay_layer(const BenchLayer& b, NormKind nu, const std::string& rules_spec, bool warm = false,
                                    bool per_rule_metrics = false);

// select() alone, all 5 budgets, for each rule of `set` that is not in `skip` (already timed).
std::vector<std::pair<std::string, double>> select_only_timings(const BenchLayer& b, const std::string& set,
                                                                const std::string& skip);

}  // namespace kvsim::bench
