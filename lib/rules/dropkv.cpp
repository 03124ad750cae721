// dropkv(window, kernel, eps, gqa): DropKV (kvpress issue #284, PR #285, open; rules doc 2.18).
// For query head h and each of the last `window` queries i before the compression point, with
// causal attention p_ij over [begin, t_i] and output o_i = sum_j p_ij v_j, evicting token j alone
// moves the output by p_ij / (1 - p_ij) (o_i - v_j); DropKV scores a token by the squared move
// summed over the window,
//   s^h_j = sum_i (p_ij / (1 - p_ij + eps))^2 ||v_j - o_i||_2^2.
// As the PR's DropKVPress: every token of the span is scored (the window's own from the window
// queries that see them), the group's heads are reduced (mean by default), and the whole row is
// average-pooled (odd kernel, zero padding), so the last prefix tokens' pools take in the window's
// scores. The window tokens are protected. Defaults are the PR's: window 32, kernel 7.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/gqa.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"
#include "rules/snapkv.h"
#include "rules/window_attention.h"

namespace kvsim {
namespace {

struct DropKVParams {
  i64 window = 32;
  int kernel = 7;
  double eps = 1e-6;
  GqaChoice gqa;
};

// Query head h's one-token moves for the window queries `rows` (positions begin + width - |rows|
// + i) over the keys [begin, begin + width): calls move(i, j, s) for every key j query i attends
// to, s = (p_ij / (1 - p_ij + eps))^2 ||v_j - o_i||^2 in float64.
template <class Move>
void window_moves(const TraceMeta& meta, const LayerData& d, int h, const std::vector<i64>& rows, i64 begin, i64 width,
                  double eps, Move&& move) {
  const i64 w = static_cast<i64>(rows.size()), dh = d.head_dim;
  const int g = h / (d.num_heads / d.num_kv_heads);
  avec<float> qw(w * dh), probs(w * width), outs(w * dh);
  window_probability_rows(meta, d, h, rows, begin, begin + width, qw.data(), probs.data());
  // o_i = sum_j p_ij v_j over the query's causal span.
  kernels::sgemm(false, false, w, dh, width, 1.0f, probs.data(), width, d.v_row(g, begin), dh, 0.0f, outs.data(), dh);
  for (i64 i = 0; i < w; ++i) {
    const float* p = probs.data() + i * width;
    const float* o = outs.data() + i * dh;
    for (i64 j = 0; j < width; ++j) {
      if (p[j] == 0.0f) continue;  // no move (and no causal support: j after the query)
      const float* v = d.v_row(g, begin + j);
      float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
      for (i64 c = 0; c < dh; ++c) sq += (v[c] - o[c]) * (v[c] - o[c]);
      const double r = static_cast<double>(p[j]) / (1.0 - p[j] + eps);
      move(i, j, r * r * sq);
    }
  }
}

class DropKVRule : public ScoredRule {
 public:
  DropKVRule(std::string spec, DropKVParams p) : ScoredRule(std::move(spec)), p_(p) {}

  // Each window query's moves over the prefix tokens (defensive(dropkv): their worst case).
  bool has_query_rows() const override { return true; }
  QueryScoreRows query_rows(const RuleInput& in, i64 begin, i64 end) const override {
    const TraceMeta* meta = in.meta;
    const LayerData* d = in.data;
    const i64 w = p_.window, m = end - begin - w;
    QueryScoreRows out;
    out.m = m;
    out.queries = w;
    out.fill = [meta, d, begin, m, eps = p_.eps, rows = window_query_rows(*meta, *d, begin, end, w, spec())](
                   int h, i64 i0, i64 i1, float* dst) {
      std::fill(dst, dst + (i1 - i0) * m, 0.0f);
      const std::vector<i64> block(rows.begin() + i0, rows.begin() + i1);
      window_moves(*meta, *d, h, block, begin, m + i1, eps, [&](i64 i, i64 j, double s) {
        if (j < m) dst[i * m + j] = static_cast<float>(s);
      });
    };
    return out;
  }

  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const TraceMeta& meta = *in.meta;
    const LayerData& d = *in.data;
    const i64 w = p_.window, L = end - begin, m = L - w;
    const std::vector<i64> rows = window_query_rows(meta, d, begin, end, w, spec());
    const int G = d.num_heads / d.num_kv_heads;
    avec<float> per_head(static_cast<std::size_t>(d.num_heads) * L, 0.0f);
#pragma omp parallel
    {
      std::vector<double> acc(L);
#pragma omp for schedule(dynamic)
      for (int h = 0; h < d.num_heads; ++h) {
        std::fill(acc.begin(), acc.end(), 0.0);
        window_moves(meta, d, h, rows, begin, L, p_.eps, [&](i64, i64 j, double s) { acc[j] += s; });
        float* out = per_head.data() + static_cast<std::size_t>(h) * L;
        for (i64 j = 0; j < L; ++j) out[j] = static_cast<float>(acc[j]);
      }
    }
    UnitScores s(p_.gqa.mode, units_for(p_.gqa.mode, d), L);
    // As the PR: the group's reduction first, then the average pool (zero padding) over the whole
    // row, window included; the prefix's scores are kept.
    SnapKVParams pool;
    pool.window = w;
    pool.kernel = p_.kernel;
    pool.max_pool = false;
    pool.gqa = p_.gqa;
    pool.pool_then_reduce = false;
    std::vector<float> red(static_cast<std::size_t>(s.units) * L);
    snapkv_pool_reduce(per_head.data(), d.num_heads, G, L, pool, red.data());
    for (int u = 0; u < s.units; ++u) std::copy_n(red.data() + u * L, m, s.unit(u));
    s.protect_range(m, L);
    return s;
  }

 private:
  DropKVParams p_;
};

KVSIM_RULE((RuleInfo{"dropkv",
                     "DropKV (kvpress PR #285): the squared one-token eviction move (p/(1-p+eps))^2 ||v_j - o_i||^2 "
                     "summed over the last `window` queries, pooled; window protected",
                     {{"window", "int", "32", "observation window w (queries; the w tokens are kept)"},
                      {"kernel", "int", "7", "average pooling kernel, odd (1: none), over the row with the window"},
                      {"eps", "double", "1e-06", "added to 1 - p in the denominator"},
                      {"gqa", "choice mean|max|sum|query", "mean", "group reduction, or per query head"}},
                     /*in_all=*/false}),  // in "all"; "default" stays the set earlier results used
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             DropKVParams p;
             p.window = r.get_int("window", 32, 1, 1 << 20);
             p.kernel = r.get_pool_kernel(7);
             p.eps = r.get_double("eps", 1e-6, 0.0, 1.0);
             if (!(p.eps > 0)) r.error("parameter 'eps': must be > 0");
             p.gqa = read_gqa(r);
             return std::make_unique<DropKVRule>(r.canonical(), p);
           });

}  // namespace
}  // namespace kvsim
