// The FMA peak loop: every kernel set computes the scalar reference's recurrence (a = a m + c on
// 12 accumulators) in each lane, so its sum is lanes x the scalar sum up to FMA rounding; the
// measurement is positive and the per-thread rate never exceeds the total.
#include "kernel_test_util.h"
#include "kernels/fma_peak.h"

namespace k = kvsim::kernels;

TEST_CASE("fma_loop of the SIMD sets matches the scalar reference's recurrence per lane") {
  // mul + add (scalar) and FMA round differently at each step: the paths drift apart by up to
  // ~iters x 2^-24 relative, so the tolerance grows with the iteration count.
  for (long long iters : {0LL, 1LL, 1000LL, 100000LL}) {
    CAPTURE(iters);
    const double ref = k::scalar::fma_loop(iters);
    const double tol = 1e-6 + 1.2e-7 * static_cast<double>(iters);
    CHECK(std::isfinite(ref));
    if (k::cpu_isas().supports(k::Isa::avx2)) CHECK(k::avx2::fma_loop(iters) == doctest::Approx(8 * ref).epsilon(tol));
    if (k::cpu_isas().supports(k::Isa::avx512))
      CHECK(k::avx512::fma_loop(iters) == doctest::Approx(16 * ref).epsilon(tol));
  }
}

TEST_CASE("measure_fma_peak: positive rates, per thread <= all threads, lanes of the CPU's widest set") {
  const auto p = k::measure_fma_peak(2, 0.01, 1);
  CHECK(p.threads == 2);
  CHECK(p.gflops_per_thread > 0);
  CHECK(p.gflops_per_thread <= p.gflops_all);
  const auto best = k::cpu_isas().best();
  CHECK(p.lanes == (best == k::Isa::avx512 ? 16 : best == k::Isa::avx2 ? 8 : 1));
}
