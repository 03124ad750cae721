// Kernel micro-benchmarks: each kernel on fixed pseudo-random inputs, timed as the best of three
// runs of at least min_seconds, scalar namespace vs the best SIMD namespace here (avx512, else avx2) called directly. Time is the
// calling thread's CPU time, so other load on a shared machine does not skew the ratios.
#include "kernels/kernel_bench.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>

#include <time.h>

#include "kernels/isa.h"
#include "kernels/kernels.h"

namespace kvsim::kernels {
namespace {

double thread_cpu_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Seconds per call of fn: best of 3 runs, each repeating fn for at least min_seconds.
double time_call(const std::function<void()>& fn, double min_seconds) {
  fn();  // warm caches and page in buffers
  double best = std::numeric_limits<double>::infinity();
  for (int run = 0; run < 3; ++run) {
    const double t0 = thread_cpu_seconds();
    i64 reps = 0;
    double elapsed;
    do {
      fn();
      ++reps;
      elapsed = thread_cpu_seconds() - t0;
    } while (elapsed < min_seconds);
    best = std::min(best, elapsed / static_cast<double>(reps));
  }
  return best;
}

std::vector<float> random_floats(i64 n, float lo, float hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

// Keeps results observable so the compiler cannot drop the calls.
volatile float g_sink;

}  // namespace

std::vector<KernelTiming> bench_kernels(const KernelBenchOptions& opt) {
  const i64 n = std::max<i64>(opt.n, 16), d = std::max<i64>(opt.d, 1), rows = std::max<i64>(opt.rows, 1);
  const Isa fast = cpu_isas().best();  // the best SIMD set here (none: the fast column is NaN)
  const bool simd = fast != Isa::scalar;
  const char* fast_name = isa_name(fast);
  const std::string vec = "n=" + std::to_string(n);
  const std::string mat = "rows=" + std::to_string(rows) + " d=" + std::to_string(d);

  auto x = random_floats(n, -8.f, 8.f, 1), y = random_floats(n, -1.f, 1.f, 2), work = x;
  std::vector<float> out(static_cast<std::size_t>(n));
  std::vector<std::uint16_t> half(static_cast<std::size_t>(n));
  std::mt19937 rng(3);
  for (auto& h : half) h = static_cast<std::uint16_t>(0x3000 + rng() % 0x1800);  // finite values
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(std::max(n, rows)));
  for (auto& m : mask) m = static_cast<std::uint8_t>(rng() % 2);
  const auto m = random_floats(rows * d, -1.f, 1.f, 4);
  const auto G = random_floats(d * d, -1.f, 1.f, 5);
  const auto w = random_floats(rows, 0.f, 1.f, 6);
  const i64 qrows = std::max<i64>(1, rows / 16);  // quadratic forms cost d^2 per row
  std::vector<float> dvec(static_cast<std::size_t>(std::max(d, rows)));
  std::vector<i64> idx(static_cast<std::size_t>(n));
  const int g = 4;
  const i64 gn = n / g;

  std::vector<KernelTiming> rows_out;
  auto add = [&](const char* name, const std::string& shape, double elements, const char* fast_label,
                 const std::function<void()>& ref, const std::function<void()>& fast, bool fast_ok) {
    KernelTiming t;
    t.kernel = name;
    t.shape = shape;
    t.fast_name = fast_label;
    t.elements = elements;
    t.scalar_seconds = time_call(ref, opt.min_seconds);
    t.fast_seconds = fast_ok ? time_call(fast, opt.min_seconds) : std::numeric_limits<double>::quiet_NaN();
    rows_out.push_back(t);
  };
  // Same call on the scalar namespace and on the best SIMD one.
#define KVSIM_SIMD_CALL(name, ...) (fast == Isa::avx512 ? avx512::name(__VA_ARGS__) : avx2::name(__VA_ARGS__))
#define KVSIM_BENCH(name, shape, elements, ...)                                              \
  add(#name, shape, elements, fast_name, [&] { scalar::name(__VA_ARGS__); },                 \
      [&] { KVSIM_SIMD_CALL(name, __VA_ARGS__); }, simd)
#define KVSIM_BENCH_R(name, shape, elements, ...)                                            \
  add(#name, shape, elements, fast_name, [&] { g_sink = static_cast<float>(scalar::name(__VA_ARGS__)); }, \
      [&] { g_sink = static_cast<float>(KVSIM_SIMD_CALL(name, __VA_ARGS__)); }, simd)

  const double dn = static_cast<double>(n);
  KVSIM_BENCH(widen_f16, vec, dn, half.data(), out.data(), n);
  KVSIM_BENCH(widen_bf16, vec, dn, half.data(), out.data(), n);
  KVSIM_BENCH_R(count_nonfinite, vec, dn, x.data(), n);
  // Softmax of softmax output is still a softmax: in-place repetition keeps the same cost.
  KVSIM_BENCH_R(softmax_inplace, vec, dn, work.data(), n);
  KVSIM_BENCH_R(scaled_softmax_inplace, vec, dn, work.data(), n, 0.088f);
  KVSIM_BENCH_R(sum, vec, dn, x.data(), n);
  KVSIM_BENCH_R(masked_sum, vec, dn, x.data(), mask.data(), n);
  KVSIM_BENCH_R(dot, vec, dn, x.data(), y.data(), n);
  KVSIM_BENCH_R(abs_sum, vec, dn, x.data(), n);
  KVSIM_BENCH_R(max_value, vec, dn, x.data(), n);
  KVSIM_BENCH(axpy, vec, dn, 1e-9f, x.data(), out.data(), n);
  KVSIM_BENCH(scale, vec, dn, out.data(), n, 1.0f);
  KVSIM_BENCH(masked_weighted_rowsum, mat, static_cast<double>(rows * d), w.data(), mask.data(), m.data(),
              rows, d, d, dvec.data());
  KVSIM_BENCH(row_abs_sums, mat, static_cast<double>(rows * d), m.data(), rows, d, d, dvec.data());
  KVSIM_BENCH(row_quadratic_forms, "rows=" + std::to_string(qrows) + " d=" + std::to_string(d),
              static_cast<double>(qrows * d * d), m.data(), qrows, d, G.data(), dvec.data());
  KVSIM_BENCH(avg_pool1d, vec + " k=7", dn, x.data(), n, 7, out.data());
  KVSIM_BENCH(max_pool1d, vec + " k=7", dn, x.data(), n, 7, out.data());
  KVSIM_BENCH(group_reduce, "g=4 n=" + std::to_string(gn), dn, x.data(), g, gn, gn, GroupOp::mean, out.data());
  float masses[4];
  const auto nu = random_floats(n, 0.f, 4.f, 7);
  KVSIM_BENCH(split_mass_sums, vec, dn, y.data(), nu.data(), mask.data(), n, masses);
  KVSIM_BENCH_R(compress_masked, vec, dn, x.data(), mask.data(), n, out.data());
  // One 64-column panel of W (d x kPanel) against `rows` rows: elements = multiply-adds.
  const auto panel = random_floats(d * kPanel, -1.f, 1.f, 8);
  std::vector<float> l1(static_cast<std::size_t>(rows)), sq(static_cast<std::size_t>(rows));
  KVSIM_BENCH(project_panel, mat + " cols=64", static_cast<double>(rows * d * kPanel), m.data(), rows, d,
              panel.data(), l1.data(), sq.data(), nullptr);
#undef KVSIM_BENCH
#undef KVSIM_BENCH_R
#undef KVSIM_SIMD_CALL

  for (i64 k : {std::max<i64>(1, n / 64), n / 4, n * 3 / 4}) {
    add("topk", vec + " k=" + std::to_string(k), dn, "select",
        [&, k] { g_sink = static_cast<float>(scalar::topk(x.data(), n, k, idx.data())); },
        [&, k] { g_sink = static_cast<float>(topk(x.data(), n, k, idx.data())); }, true);
  }
  return rows_out;
}

}  // namespace kvsim::kernels
