#pragma once
// Micro-benchmark of every kernel: the scalar reference against the fast version (AVX-512 or
// AVX2, or for topk the O(n) selection), on synthetic inputs of the given sizes. For `kvsim bench`.
#include <string>
#include <vector>

#include "core/types.h"

namespace kvsim::kernels {

struct KernelBenchOptions {
  i64 n = 131072;            // vector length (softmax, sums, pooling, widening, topk)
  i64 d = 128;               // head dim (row kernels)
  i64 rows = 4096;           // rows for the row kernels (masked_weighted_rowsum gathers ~half)
  double min_seconds = 0.05; // time each variant at least this long (best of 3 such runs)
};

struct KernelTiming {
  std::string kernel;        // kernel name, e.g. "softmax_inplace"
  std::string shape;         // e.g. "n=131072" or "rows=4096 d=128"
  std::string fast_name;     // what the fast column ran: "avx512", "avx2" or "select" (topk)
  double elements = 0;       // input elements one call touches (the rate's numerator)
  double scalar_seconds = 0; // thread CPU seconds per call
  double fast_seconds = 0;   // thread CPU seconds per call; NaN when the fast version cannot run here
  double scalar_gelem_s() const { return elements / scalar_seconds * 1e-9; }
  double fast_gelem_s() const { return elements / fast_seconds * 1e-9; }
  double speedup() const { return scalar_seconds / fast_seconds; }
};

// Runs every kernel (single-threaded) and returns one row per kernel/shape, in a fixed order.
std::vector<KernelTiming> bench_kernels(const KernelBenchOptions& opt = {});

}  // namespace kvsim::kernels
