#include "kernels/fma_peak.h"

#include <omp.h>
#include <time.h>

#include <algorithm>
#include <vector>

#include "kernels/isa.h"

namespace kvsim::kernels {

namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

volatile float g_sink = 0;  // keeps the loops' results alive

}  // namespace

FmaPeak measure_fma_peak(int threads, double seconds, int reps) {
  const Isa isa = cpu_isas().best();
  FmaPeak r;
  r.threads = std::max(1, threads);
  r.lanes = isa == Isa::avx512 ? 16 : (isa == Isa::avx2 ? 8 : 1);
  auto loop = isa == Isa::avx512 ? avx512::fma_loop : (isa == Isa::avx2 ? avx2::fma_loop : scalar::fma_loop);
  // Calibrate the iteration count on this thread: ~`seconds` per timed run.
  i64 iters = 1 << 16;
  for (;;) {
    const double t0 = thread_cpu_seconds();
    g_sink = g_sink + loop(iters);
    const double t = thread_cpu_seconds() - t0;
    if (t > seconds / 4 || iters > (i64{1} << 40)) {
      iters = std::max<i64>(1, static_cast<i64>(double(iters) * seconds / std::max(t, 1e-6)));
      break;
    }
    iters *= 4;
  }
  const double flops = double(iters) * 12 * r.lanes * 2;
  std::vector<double> best(r.threads, 1e300);
#pragma omp parallel num_threads(r.threads)
  {
    const int t = omp_get_thread_num();
    for (int k = 0; k < reps; ++k) {
#pragma omp barrier
      const double t0 = thread_cpu_seconds();
      const float v = loop(iters);
      best[t] = std::min(best[t], thread_cpu_seconds() - t0);
#pragma omp critical
      g_sink = g_sink + v;
    }
  }
  for (double b : best) {
    r.gflops_all += flops / b * 1e-9;
    r.gflops_per_thread = std::max(r.gflops_per_thread, flops / b * 1e-9);
  }
  return r;
}

}  // namespace kvsim::kernels
