#pragma once
// `kvsim prefill --bench`: measured block-sparse vs dense causal attention on synthetic
// Llama-8B-shaped layers (random data in memory), next to the ideal attention-pair reduction,
// the estimation overhead, and the dense kernel's throughput against in-run OpenBLAS sgemm.
#include <functional>
#include <string>
#include <vector>

#include "prefill/prefill_config.h"

namespace kvsim::prefill {

struct BenchOptions {
  std::vector<i64> lengths{8192, 32768, 65536};
  PrefillConfig cfg;
  int num_heads = 32, num_kv_heads = 8, head_dim = 128;
  int repeats = 1;          // timed runs per kernel (the minimum is reported)
  std::uint64_t seed = 1;
};

struct BenchRow {
  i64 n = 0;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0;
  double dense_seconds = 0, sparse_seconds = 0;
  double estimate_seconds = 0;   // criticality estimation + top-K selection
  double speedup = 0;            // dense / sparse (kernel only)
  double speedup_with_estimate = 0;
  double ideal_reduction = 0;    // dense causal pairs / attended pairs
  double speedup_over_ideal = 0;
  double dense_gflops = 0, sparse_gflops = 0;  // 4*d flops per attended (query, key) pair
  double sgemm_gflops = 0;       // OpenBLAS on the attention's GEMM shapes, same threads
  double dense_fraction_of_sgemm = 0;
  // Process CPU time (all threads) of the same runs: robust to other jobs on a shared machine.
  double dense_cpu_seconds = 0, sparse_cpu_seconds = 0, speedup_cpu = 0;
  double dense_gflops_per_cpu_second = 0, sgemm_gflops_per_cpu_second = 0, dense_fraction_of_sgemm_cpu = 0;
  double max_abs_diff = 0;       // sparse kernel vs dense kernel, dense-segment rows (sanity)
};

// progress(label) is called before each stage (for stderr messages); may be empty.
std::vector<BenchRow> run_bench(const BenchOptions& opt, const std::function<void(const std::string&)>& progress);

// OpenBLAS throughput on the shapes one segment of attention multiplies: (S x d)(d x n) and
// (S x n)(n x d), in GFLOP/s (best of a few runs).
// Also reports GFLOP per CPU-second (process CPU time) when gflops_per_cpu_second is given.
double sgemm_reference_gflops(i64 S, i64 n, int d, double* gflops_per_cpu_second = nullptr);

}  // namespace kvsim::prefill
