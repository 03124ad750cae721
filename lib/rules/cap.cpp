// cap: CapKV (arXiv 2604.25975; kvpress CapPress), rules doc 2.29. A capacity-leverage score:
// per query head h, after the first n_sink tokens (protected),
//   mu_h = mean of the head's pre-RoPE prompt queries (positions >= n_sink), rotated by the mean
//          RoPE rotation of the n_future positions after the span (as `expected`);
//   w_j  = exp(tau cos(mu_h, k_j) - max_j), cos clamped to [-1, 1];
//   A    = I + sum_j (w_j + eps) v_j v_j^T;   score_hj = w_j v_j^T A^{-1} v_j,
// averaged over each KV head's query heads (gqa=mean, kvpress's). A token scores high when the
// anchor query aligns with its key AND its value adds a direction the weighted values lack.
// float64 Cholesky; kvpress solves in float32.
#include <algorithm>
#include <atomic>
#include <cmath>

#include "core/cholesky.h"
#include "core/error.h"
#include "rules/expected.h"
#include "rules/h2o_common.h"
#include "rules/registry.h"
#include "rules/rope.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

struct CapParams {
  double tau = 5.0, eps = 1e-6;
  i64 n_future = 512, n_sink = 4;
  GqaChoice gqa;
};

class CapRule : public ScoredRule {
 public:
  CapRule(std::string spec, CapParams p) : ScoredRule(std::move(spec)), p_(p) {}
  bool attention_like() const override { return true; }

  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    rules_more::check_input(in, "cap");
    const LayerData& D = *in.data;
    const i64 n = end - begin, sink = p_.n_sink;
    if (n <= sink)
      fail(in.meta->path, "prefill_len",
           "cap: the span has " + std::to_string(n) + " tokens, not more than n_sink = " + std::to_string(sink));
    const Rope rope = Rope::from_meta(*in.meta, in.layer);
    const auto rows = rules_more::require_q_rows(*in.meta, begin + sink, end, "cap",
                                                 "its query anchor averages every prompt query after the sinks");
    const int H = D.num_heads, G = H / D.num_kv_heads, d = D.head_dim;
    const i64 m = n - sink;
    std::vector<float> head_scores(static_cast<std::size_t>(H * n), 0.0f);
    std::atomic<bool> not_pd{false};
#pragma omp parallel for schedule(dynamic)
    for (int h = 0; h < H; ++h) {
      // The anchor: mean of the de-rotated queries, under the mean future rotation.
      std::vector<float> pre(static_cast<std::size_t>(m * d));
      for (i64 i = 0; i < m; ++i)
        rope.derotate(D.q_row(h, rows[i]), in.rope_position(h / G, begin + sink + i), pre.data() + i * d);
      const QueryStats st = expected_query_stats(pre.data(), m, d, rope, in.rope_position(h / G, end), p_.n_future, false);
      double mu_norm = 0;
      for (double x : st.mean) mu_norm += x * x;
      mu_norm = std::max(std::sqrt(mu_norm), 1e-12);
      const int g = h / G;
      std::vector<double> w(static_cast<std::size_t>(m));
      double wmax = -INFINITY;
      for (i64 i = 0; i < m; ++i) {
        const float* k = D.k_row(g, begin + sink + i);
        double dot = 0, kk = 0;
        for (int c = 0; c < d; ++c) {
          dot += st.mean[c] * k[c];
          kk += static_cast<double>(k[c]) * k[c];
        }
        const double cosine = std::clamp(dot / (mu_norm * std::max(std::sqrt(kk), 1e-12)), -1.0, 1.0);
        w[i] = p_.tau * cosine;
        wmax = std::max(wmax, w[i]);
      }
      std::vector<double> A(static_cast<std::size_t>(d * d), 0.0);
      for (int c = 0; c < d; ++c) A[c * d + c] = 1.0;
      for (i64 i = 0; i < m; ++i) {
        w[i] = std::exp(w[i] - wmax);
        const float* v = D.v_row(g, begin + sink + i);
        const double a = w[i] + p_.eps;
        for (int r = 0; r < d; ++r)
          for (int c = 0; c <= r; ++c) A[r * d + c] += a * v[r] * v[c];
      }
      if (!cholesky_lower(A.data(), d)) {  // reported after the parallel loop (no throw inside it)
        not_pd = true;
        continue;
      }
      std::vector<double> x(static_cast<std::size_t>(d)), y(x.size());
      for (i64 i = 0; i < m; ++i) {  // v^T A^{-1} v
        const float* v = D.v_row(g, begin + sink + i);
        std::copy_n(v, d, x.data());
        head_scores[h * n + sink + i] = static_cast<float>(w[i] * inverse_quadratic_form(A.data(), x.data(), d, y.data()));
      }
    }
    if (not_pd) fail(spec(), "values", "the capacity matrix is not positive definite");
    UnitScores s(p_.gqa.mode, rules_more::gqa_units(p_.gqa, D), n);
    reduce_heads(head_scores.data(), H, G, n, n, p_.gqa, s.score.data(), n);
    s.protect_range(0, sink);
    return s;
  }

 private:
  CapParams p_;
};

RuleInfo cap_info() {
  return {"cap",
          "CapKV (kvpress CapPress, arXiv 2604.25975): w_j v_j^T (I + sum (w+eps) v v^T)^-1 v_j, w_j = exp(tau "
          "cos(anchor query, k_j)), the anchor the mean pre-RoPE prompt query under the mean future rotation",
          {{"tau", "double > 0", "5", "temperature of the query-key alignment weights"},
           {"n_future", "int", "512", "future positions averaged into the anchor's RoPE rotation"},
           {"n_sink", "int", "4", "first tokens force-kept and left out of the anchor"},
           {"eps", "double >= 0", "1e-06", "added to each weight inside the capacity matrix"},
           {"gqa", "choice mean|max|sum|query", "mean", "group reduction, or one set per query head"}},
          /*in_all=*/false};  // needs every prompt query after the sinks
}

std::unique_ptr<Rule> build_cap(SpecReader& r) {
  CapParams p;
  p.tau = r.get_double("tau", 5.0, 1e-12, 1e12);
  p.n_future = r.get_int("n_future", 512, 1, 1LL << 30);
  p.n_sink = r.get_int("n_sink", 4, 0, 1LL << 40);
  p.eps = r.get_double("eps", 1e-6, 0.0, 1e12);
  p.gqa = read_gqa(r, "mean");
  return std::make_unique<CapRule>(r.canonical(), p);
}

KVSIM_RULE(cap_info(), build_cap);

}  // namespace
}  // namespace kvsim
