#include "replay/replay_bench.h"

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "attention/layer_cache.h"
#include "attention/perturbation.h"
#include "core/splitmix.h"
#include "core/sysinfo.h"
#include "kernels/kernels.h"
#include "rules/budget.h"
#include "rules/factory.h"
#include "rules/window_attention.h"

namespace kvsim::bench {

namespace {

template <class F> double best_of(int reps, F&& f) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    Stopwatch sw;
    f();
    best = std::min(best, sw.seconds());
  }
  return best;
}

}  // namespace

// What a rule sees of the bench layer (as kvsim replay builds it per layer).
RuleInput bench_rule_input(const BenchLayer& b, LayerCache& cache, WindowAttentionMemo& window_memo) {
  RuleInput in;
  in.meta = &b.meta;
  in.data = &b.data;
  in.n_c = b.n_c;
  in.eval_rows = b.eval_rows;
  in.cache = &cache;
  in.window_memo = &window_memo;
  return in;
}

void fill_random(float* x, i64 n, std::uint64_t seed, float scale) {
#pragma omp parallel for schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const std::uint64_t z =
        splitmix64_finalize((static_cast<std::uint64_t>(i) + 1) * kSplitmixGolden ^ seed * 0xD1B54A32D192ED03ull);
    x[i] = scale * 1.7320508f * (static_cast<float>(z >> 40) / 8388608.f - 1.f);
  }
}

// Context of S - 64 tokens then 64 question tokens; stored queries: the 64-token observation
// window and the 64 evaluation queries.
BenchLayer make_layer(i64 S) {
  BenchLayer b;
  b.n_c = S - kEval;
  TraceMeta& m = b.meta;
  m.path = "bench";
  m.model = "synthetic llama-8b shape";
  m.num_layers = 32;
  m.num_heads = kHeads;
  m.num_kv_heads = kKvHeads;
  m.head_dim = kDim;
  m.hidden_size = kHidden;
  m.attn_scale = 1.0 / std::sqrt(double(kDim));
  m.seq_len = S;
  m.prefill_len = S;
  m.input_ids.assign(S, 0);
  m.segment.assign(S, kContext);
  for (i64 t = b.n_c; t < S; ++t) m.segment[t] = kQuestion;
  for (i64 t = b.n_c - kWindow; t < S; ++t) m.q_pos.push_back(t);
  m.has_o_proj = true;
  for (i64 r = 0; r < kWindow; ++r) b.window_rows.push_back(r);
  for (i64 r = kWindow; r < kWindow + kEval; ++r) b.eval_rows.push_back(r);
  LayerData& L = b.data;
  L.layer = 0;
  L.num_heads = kHeads;
  L.num_kv_heads = kKvHeads;
  L.head_dim = kDim;
  L.hidden_size = kHidden;
  L.seq_len = S;
  L.num_q = kWindow + kEval;
  L.q.resize(std::size_t(kHeads) * L.num_q * kDim);
  L.k.resize(std::size_t(kKvHeads) * S * kDim);
  L.v.resize(std::size_t(kKvHeads) * S * kDim);
  L.o_proj.resize(std::size_t(kHidden) * kHeads * kDim);
  fill_random(L.q.data(), i64(L.q.size()), 1, 1.f);
  fill_random(L.k.data(), i64(L.k.size()), 2, 1.f);
  fill_random(L.v.data(), i64(L.v.size()), 3, 1.f);
  fill_random(L.o_proj.data(), i64(L.o_proj.size()), 4, 1.f / 64.f);
  return b;
}

// The attention core: full causal attention + head outputs of the evaluation queries, the KV
// groups' probability tiles computed and freed in waves as the replay's metrics walk them.
// tiles_peak: the most bytes of tiles alive at once.
double time_core(const BenchLayer& b, int threads, int reps, std::size_t* tiles_peak) {
  omp_set_num_threads(threads);
  return best_of(reps, [&] {
    LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows);
    cache.walk_tiles(QuerySet::eval, [](int, int, i64, i64) {}, true);
    if (tiles_peak) *tiles_peak = cache.prob_bytes_peak();
  });
}

// Plain OpenBLAS on the same shapes: per KV group QK^T [G*n x d]x[d x S] and PV [G*n x S]x[S x d].
double time_sgemm(const BenchLayer& b, int threads, int reps) {
  omp_set_num_threads(threads);
  const int G = kHeads / kKvHeads;
  const i64 S = b.data.seq_len, rows = G * kEval;
  avec<float> A(std::size_t(kKvHeads) * rows * kDim), C(std::size_t(kKvHeads) * rows * S),
      O(std::size_t(kKvHeads) * rows * kDim);
  fill_random(A.data(), i64(A.size()), 5, 1.f);
  return best_of(reps, [&] {
#pragma omp parallel for schedule(dynamic, 1)
    for (int g = 0; g < kKvHeads; ++g) {
      float* c = C.data() + std::size_t(g) * rows * S;
      kernels::sgemm(false, true, rows, S, kDim, 1.f, A.data() + std::size_t(g) * rows * kDim, kDim,
                     b.data.k_head(g), kDim, 0.f, c, S);
      kernels::sgemm(false, false, rows, kDim, S, 1.f, c, S, b.data.v_head(g), kDim, 0.f,
                     O.data() + std::size_t(g) * rows * kDim, kDim);
    }
  });
}

ReplayLayerTiming time_replay_layer(const BenchLayer& b, NormKind nu, const std::string& rules_spec, bool warm,
                                    bool per_rule_metrics) {
  WindowAttentionMemo window_memo;  // as in kvsim replay: snapkv-family rules share it
  ReplayLayerTiming t;
  LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows, b.window_rows);
  if (warm) {
    cache.precompute_norms(nu);
    if (nu != NormKind::upper) cache.precompute_norms(NormKind::upper);  // rules' own upper norms
  }
  Stopwatch sw;
  const auto rules = make_rules(rules_spec);
  const auto budgets = parse_budgets("0.1,0.2,0.3,0.4,0.5");
  const RuleInput in = bench_rule_input(b, cache, window_memo);
  std::vector<std::vector<Selection>> selections;
  for (const auto& r : rules) {
    Stopwatch sel;
    selections.push_back(r->select(in, budgets));
    t.select_seconds.emplace_back(r->spec(), sel.seconds());
  }
  Stopwatch met;
  measure_rules(cache, QuerySet::eval, nu, selections);
  t.metrics_total = met.seconds();
  t.seconds = sw.seconds();
  if (per_rule_metrics) {
    LayerReference ref(cache, QuerySet::eval, nu);
    cache.precompute(QuerySet::eval);
    for (std::size_t r = 0; r < rules.size(); ++r) {
      Stopwatch one;
      measure_perturbations(cache, ref, selections[r]);
      t.metrics_seconds.emplace_back(rules[r]->spec(), one.seconds());
    }
  }
  return t;
}

// select() alone, all 5 budgets, for each rule of `set` that is not in `skip` (already timed).
std::vector<std::pair<std::string, double>> select_only_timings(const BenchLayer& b, const std::string& set,
                                                                const std::string& skip) {
  WindowAttentionMemo window_memo;
  LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows, b.window_rows);
  const auto budgets = parse_budgets("0.1,0.2,0.3,0.4,0.5");
  const RuleInput in = bench_rule_input(b, cache, window_memo);
  std::vector<std::string> done;
  for (const auto& r : make_rules(skip)) done.push_back(r->spec());
  std::vector<std::pair<std::string, double>> out;
  for (const auto& r : make_rules(set)) {
    if (std::find(done.begin(), done.end(), r->spec()) != done.end()) continue;
    Stopwatch sel;
    (void)r->select(in, budgets);
    out.emplace_back(r->spec(), sel.seconds());
  }
  return out;
}

LengthTiming time_length(i64 S, int threads, int reps) {
  LengthTiming r;
  r.S = S;
  const BenchLayer b = make_layer(S);
  const double c0 = cpu_seconds();
  r.core_s = time_core(b, threads, reps, &r.prob_tiles_peak_bytes);
  r.core_cpu_s = (cpu_seconds() - c0) / reps / threads;
  r.sgemm_s = time_sgemm(b, threads, reps);
  r.core1_s = threads > 1 ? time_core(b, 1, 1) : r.core_s;
  omp_set_num_threads(threads);
  LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows);
  cache.precompute(QuerySet::eval);
  r.nu_upper_s = best_of(1, [&] { cache.precompute_norms(NormKind::upper); });
  r.nu_l2_s = best_of(1, [&] { cache.precompute_norms(NormKind::l2); });
  // Exact L1 is ~2 S d D flops per head: all heads up to 32K tokens, else 4 heads, scaled.
  r.nu_exact_heads = S <= 32768 ? kHeads : 4;
  const double t = best_of(1, [&] {
#pragma omp parallel for schedule(dynamic, 1)
    for (int h = 0; h < r.nu_exact_heads; ++h) cache.value_norms(h, NormKind::l1);
  });
  r.nu_exact_s = t * kHeads / r.nu_exact_heads;
  LayerReference ref(cache, QuerySet::eval, NormKind::upper);
  Selection sel(GqaMode::kv, kKvHeads, b.n_c);
  for (i64 j = 0; j < i64(sel.kept.size()); ++j) sel.kept[j] = (j * 2654435761u) % 5 == 0;  // 20%
  r.metrics_s = best_of(reps, [&] { measure_perturbation(cache, ref, sel); });
  // GEMM floor of one selection: its narrower form (support: the kept tokens and the question;
  // evicted: the rest of the context) times the value rows, and delta through every W_o^h.
  const auto floor_flops = [&](const Selection& x) {
    const i64 support = x.kept_count(0) + (S - b.n_c), evicted = b.n_c - x.kept_count(0);
    return 2.0 * kHeads * kEval * kDim * (double(std::min(support, evicted)) + kHidden);
  };
  r.metrics_floor_flops = floor_flops(sel);
  std::vector<Selection> nested;
  for (int tenth = 1; tenth <= 5; ++tenth) {
    Selection x(GqaMode::kv, kKvHeads, b.n_c);
    for (i64 j = 0; j < i64(x.kept.size()); ++j) x.kept[j] = (j * 2654435761u) % 10 < tenth;
    r.metrics_batch_floor_flops += floor_flops(x) / 5;
    nested.push_back(std::move(x));
  }
  r.metrics_batch_s = best_of(reps, [&] { measure_perturbations(cache, ref, nested); }) / 5;
  return r;
}

double best_sgemm_gflops() {
  const i64 m = 2048;
  avec<float> A(m * m), B(m * m), C(m * m);
  fill_random(A.data(), m * m, 9, 1.f);
  fill_random(B.data(), m * m, 10, 1.f);
  const double t =
      best_of(3, [&] { kernels::sgemm(false, false, m, m, m, 1.f, A.data(), m, B.data(), m, 0.f, C.data(), m); });
  return 2.0 * double(m) * m * m / t * 1e-9;
}

BlasThreading probe_blas_threading() {
  const i64 m = 1024;
  avec<float> A(m * m), B(m * m), C(m * m);
  fill_random(A.data(), m * m, 7, 1.f);
  fill_random(B.data(), m * m, 8, 1.f);
  BlasThreading r;
  r.outside_seconds =
      best_of(3, [&] { kernels::sgemm(false, false, m, m, m, 1.f, A.data(), m, B.data(), m, 0.f, C.data(), m); });
  r.inside_seconds = best_of(3, [&] {
#pragma omp parallel num_threads(2)
    {
      if (omp_get_thread_num() == 0)
        kernels::sgemm(false, false, m, m, m, 1.f, A.data(), m, B.data(), m, 0.f, C.data(), m);
    }
  });
  return r;
}

}  // namespace kvsim::bench
