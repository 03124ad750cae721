// kernel_bench: one row per kernel with positive timings (small sizes, fast).
#include <set>
#include <string>

#include "kernel_test_util.h"
#include "kernels/kernel_bench.h"

TEST_CASE("bench_kernels covers every kernel with sane timings") {
  kvsim::kernels::KernelBenchOptions opt;
  opt.n = 4099;
  opt.d = 96;
  opt.rows = 64;
  opt.min_seconds = 1e-4;
  const auto rows = kvsim::kernels::bench_kernels(opt);
  std::set<std::string> names;
  for (const auto& r : rows) {
    names.insert(r.kernel);
    CAPTURE(r.kernel);
    CHECK(r.elements > 0);
    CHECK(r.scalar_seconds > 0);
    CHECK(std::isfinite(r.scalar_gelem_s()));
    if (r.fast_name == "select" || kvsim::kernels::cpu_isas().best() != kvsim::kernels::Isa::scalar) CHECK(r.fast_seconds > 0);
    else CHECK(std::isnan(r.fast_seconds));
  }
  for (const char* k : {"widen_f16", "widen_bf16", "count_nonfinite", "softmax_inplace", "scaled_softmax_inplace",
                        "sum", "masked_sum", "dot", "abs_sum", "max_value", "axpy", "scale",
                        "masked_weighted_rowsum", "row_abs_sums", "row_quadratic_forms", "avg_pool1d",
                        "max_pool1d", "group_reduce", "topk"})
    CHECK_MESSAGE(names.count(k) == 1, k);
}
