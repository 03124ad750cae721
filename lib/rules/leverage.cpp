// leverage: statistical leverage of the pre-RoPE keys (Chari & Van Durme 2025, Compactor, arXiv
// 2507.08143; kvpress LeverageScorePress), rules doc 2.27. Per KV head, the span's keys are
// de-rotated to pre-RoPE (rules/rope.h), centred over the span, and token j scores
// h_j = x_j^T (X^T X + jitter I)^{-1} x_j (clamped at 0): how far it lies outside the span's key
// geometry. kvpress approximates it with a right Gaussian sketch drawn afresh per call (and the
// same jitter on the sketched Gram), which no replay can reproduce; kvsim computes the quantity
// the sketch estimates, exactly (float64 Cholesky). kvpress's z-normalisation does not change
// the ranking. Nothing is protected.
#include <atomic>
#include <cmath>

#include "core/cholesky.h"
#include "core/error.h"
#include "rules/registry.h"
#include "rules/rope.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class LeverageRule : public ScoredRule {
 public:
  LeverageRule(std::string spec, double jitter) : ScoredRule(std::move(spec)), jitter_(jitter) {}
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const LayerData& d = *in.data;
    const Rope rope = Rope::from_meta(*in.meta, in.layer);
    const i64 n = end - begin;
    const int dim = d.head_dim;
    UnitScores s(GqaMode::kv, d.num_kv_heads, n);
    std::atomic<bool> not_pd{false};
#pragma omp parallel for schedule(dynamic)
    for (int g = 0; g < d.num_kv_heads; ++g) {
      std::vector<double> X(static_cast<std::size_t>(n) * dim), mean(dim, 0.0);
      std::vector<float> pre(dim);
      for (i64 j = 0; j < n; ++j) {
        rope.derotate(d.k_row(g, begin + j), in.rope_position(g, begin + j), pre.data());
        for (int c = 0; c < dim; ++c) mean[c] += (X[j * dim + c] = pre[c]);
      }
      for (int c = 0; c < dim; ++c) mean[c] /= static_cast<double>(n);
      std::vector<double> Gm(static_cast<std::size_t>(dim) * dim, 0.0);
      for (i64 j = 0; j < n; ++j) {
        double* x = X.data() + j * dim;
        for (int c = 0; c < dim; ++c) x[c] -= mean[c];
        for (int a = 0; a < dim; ++a)
          for (int b = 0; b <= a; ++b) Gm[a * dim + b] += x[a] * x[b];
      }
      for (int a = 0; a < dim; ++a) Gm[a * dim + a] += jitter_;
      if (!cholesky_lower(Gm.data(), dim)) {  // reported after the parallel loop (no throw inside it)
        not_pd = true;
        continue;
      }
      std::vector<double> y(dim);
      float* out = s.unit(g);
      for (i64 j = 0; j < n; ++j)  // h_j = ||L^{-1} x_j||^2
        out[j] = static_cast<float>(std::max(0.0, inverse_quadratic_form(Gm.data(), X.data() + j * dim, dim, y.data())));
    }
    if (not_pd) fail(spec(), "keys", "the key Gram matrix is not positive definite (raise jitter)");
    return s;
  }

 private:
  double jitter_;
};

KVSIM_RULE((RuleInfo{"leverage",
                     "key leverage (kvpress LeverageScorePress, Compactor), exact: x_j^T (X^T X + jitter I)^-1 x_j of "
                     "the centred pre-RoPE keys per KV head (kvpress estimates it with a random sketch)",
                     {{"jitter", "double >= 0", "0.01", "added to the Gram matrix's diagonal (kvpress's first jitter)"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const double jitter = r.get_double("jitter", 1e-2, 0.0, 1e12);
             return std::make_unique<LeverageRule>(r.canonical(), jitter);
           });

}  // namespace
}  // namespace kvsim
