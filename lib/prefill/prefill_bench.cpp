#include "prefill/prefill_bench.h"

#include <algorithm>
#include <cmath>
#include <ctime>
#include <limits>

#include "core/splitmix.h"
#include "core/sysinfo.h"
#include "kernels/kernels.h"
#include "prefill/block_sparse_attention.h"
#include "prefill/criticality.h"

namespace kvsim::prefill {

namespace {

// Uniform [-1, 1) from splitmix64: fast enough to fill gigabytes.
void fill_random(avec<float>& x, std::uint64_t seed) {
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (std::size_t i = 0; i < x.size(); ++i) {
      const std::uint64_t z = splitmix64_finalize(seed + kSplitmixGolden * (i + 1));
      x[i] = static_cast<float>(static_cast<double>(z >> 40) / static_cast<double>(1ull << 23) - 1.0);
    }
  }
}

double cpu_now() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

// Best wall time of `repeats` runs; *cpu gets the process CPU time of that run (all threads),
// which a machine shared with other jobs inflates far less than the wall time.
template <class F>
double best_time(int repeats, F&& f, double* cpu = nullptr) {
  double best = std::numeric_limits<double>::infinity();
  for (int r = 0; r < std::max(1, repeats); ++r) {
    Stopwatch sw;
    const double c0 = cpu_now();
    f();
    const double wall = sw.seconds(), used = cpu_now() - c0;
    if (wall < best) {
      best = wall;
      if (cpu) *cpu = used;
    }
  }
  return best;
}

}  // namespace

double sgemm_reference_gflops(i64 S, i64 n, int d, double* gflops_per_cpu_second) {
  avec<float> q(static_cast<std::size_t>(S * d)), k(static_cast<std::size_t>(n * d)),
      s(static_cast<std::size_t>(S * n)), o(static_cast<std::size_t>(S * d));
  fill_random(q, 11);
  fill_random(k, 12);
  fill_random(s, 13);
  const double flops = 2.0 * 2.0 * static_cast<double>(S) * static_cast<double>(n) * d;
  double cpu = 0;
  const double t = best_time(3, [&] {
    kernels::sgemm(false, true, S, n, d, 1.0f, q.data(), d, k.data(), d, 0.0f, s.data(), n);
    kernels::sgemm(false, false, S, d, n, 1.0f, s.data(), n, k.data(), d, 0.0f, o.data(), d);
  }, &cpu);
  if (gflops_per_cpu_second) *gflops_per_cpu_second = flops / cpu * 1e-9;
  return flops / t * 1e-9;
}

std::vector<BenchRow> run_bench(const BenchOptions& opt, const std::function<void(const std::string&)>& progress) {
  std::vector<BenchRow> rows;
  auto say = [&](const std::string& s) { if (progress) progress(s); };
  for (i64 n : opt.lengths) {
    const SegmentPlan plan(n, opt.cfg);
    BenchRow row;
    row.n = n;
    row.num_heads = opt.num_heads;
    row.num_kv_heads = opt.num_kv_heads;
    row.head_dim = opt.head_dim;
    const int d = opt.head_dim;
    avec<float> q(static_cast<std::size_t>(opt.num_heads * n * d)), k(static_cast<std::size_t>(opt.num_kv_heads * n * d)),
        v(k.size()), out_dense(q.size()), out_sparse(q.size());
    say("n=" + std::to_string(n) + ": random data");
    fill_random(q, opt.seed);
    fill_random(k, opt.seed + 1);
    fill_random(v, opt.seed + 2);
    HeadsView x{opt.num_heads, opt.num_kv_heads, d, n, q.data(), n * d, k.data(), v.data(), n * d,
                static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};

    say("n=" + std::to_string(n) + ": estimation");
    BlockSelection sel(plan, opt.num_kv_heads);
    row.estimate_seconds = best_time(opt.repeats, [&] { sel = select_blocks(plan, estimate_criticality(x, plan)); });
    const BlockSelection dense = BlockSelection::dense(plan, opt.num_kv_heads);

    // Sparse and dense runs alternate, best of each kept, so load drift on a shared machine
    // biases neither side.
    row.sparse_seconds = row.dense_seconds = std::numeric_limits<double>::infinity();
    for (int rep = 0; rep < std::max(1, opt.repeats); ++rep) {
      say("n=" + std::to_string(n) + ": sparse kernel, run " + std::to_string(rep + 1));
      double cpu = 0;
      const double ts = best_time(1, [&] { block_sparse_attention(x, sel, out_sparse.data()); }, &cpu);
      if (ts < row.sparse_seconds) row.sparse_seconds = ts, row.sparse_cpu_seconds = cpu;
      say("n=" + std::to_string(n) + ": dense kernel, run " + std::to_string(rep + 1));
      const double td = best_time(1, [&] { block_sparse_attention(x, dense, out_dense.data()); }, &cpu);
      if (td < row.dense_seconds) row.dense_seconds = td, row.dense_cpu_seconds = cpu;
    }

    // Dense segments attend to the same keys in both runs: their rows must agree.
    for (int h = 0; h < opt.num_heads; ++h)
      for (const auto& seg : plan.segments())
        if (seg.dense)
          for (i64 e = (h * n + seg.start) * d; e < (h * n + seg.end) * d; ++e)
            row.max_abs_diff = std::max(row.max_abs_diff, static_cast<double>(std::fabs(out_dense[e] - out_sparse[e])));

    const double flops_per_pair = 4.0 * d;
    const double dense_pairs = opt.num_heads * plan.dense_pairs();
    const double sparse_pairs = static_cast<double>(opt.num_heads / opt.num_kv_heads) * sel.attended_pairs();
    row.ideal_reduction = dense_pairs / sparse_pairs;
    row.speedup = row.dense_seconds / row.sparse_seconds;
    row.speedup_with_estimate = row.dense_seconds / (row.sparse_seconds + row.estimate_seconds);
    row.speedup_over_ideal = row.speedup / row.ideal_reduction;
    row.dense_gflops = dense_pairs * flops_per_pair / row.dense_seconds * 1e-9;
    row.sparse_gflops = sparse_pairs * flops_per_pair / row.sparse_seconds * 1e-9;
    say("n=" + std::to_string(n) + ": OpenBLAS reference");
    row.sgemm_gflops = sgemm_reference_gflops(opt.cfg.segment, std::min<i64>(n, 8192), d, &row.sgemm_gflops_per_cpu_second);
    row.dense_fraction_of_sgemm = row.dense_gflops / row.sgemm_gflops;
    row.dense_gflops_per_cpu_second = dense_pairs * flops_per_pair / row.dense_cpu_seconds * 1e-9;
    row.dense_fraction_of_sgemm_cpu = row.dense_gflops_per_cpu_second / row.sgemm_gflops_per_cpu_second;
    row.speedup_cpu = row.dense_cpu_seconds / row.sparse_cpu_seconds;
    rows.push_back(row);
  }
  return rows;
}

}  // namespace kvsim::prefill
