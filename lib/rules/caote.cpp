// caote(base): CAOTE (Goel et al., ICML 2025, arXiv 2504.14051) on any attention-like scorer
// (rules doc 2.17). The base scores, normalised over a unit's candidates, are read as attention
// weights a_j with output o = sum_j a_j v_j; evicting token j alone renormalises the rest, so
// o^(-j) - o = a_j / (1 - a_j) (o - v_j), and the score is the size of that change,
//   s_j = a_j / (1 - a_j) ||o - v_j||_2,
// the eviction error of one token, which the paper ranks by instead of a_j. Protected tokens
// (the base's window, sinks) are neither candidates nor part of o.
#include <cmath>
#include <limits>

#include "core/error.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class CaoteRule : public ScoredRule {
 public:
  CaoteRule(std::string spec, std::unique_ptr<ScoredRule> base) : ScoredRule(std::move(spec)), base_(std::move(base)) {}
  bool plain() const override { return base_->plain(); }
  std::string wrapper_kind() const override { return "caote"; }
  UnitScores scores(const RuleInput& in) const override { return eviction_errors(in, base_->scores(in), 0); }
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    return eviction_errors(in, base_->scores_range(in, begin, end), begin);
  }
  i64 layer_budget(const RuleInput& in, const UnitScores& s, i64 B, double exact) const override {
    return base_->layer_budget(in, s, B, exact);
  }

 private:
  // Positions of s are local: position j is token begin + j of the layer.
  UnitScores eviction_errors(const RuleInput& in, UnitScores s, i64 begin) const {
    const LayerData& d = *in.data;
    const int G = d.num_heads / d.num_kv_heads, dim = d.head_dim;
    std::vector<std::vector<float>> lin(s.units);
    for (int u = 0; u < s.units; ++u) lin[u] = s.linear_scores(u);
#pragma omp parallel for schedule(dynamic)
    for (int u = 0; u < s.units; ++u) {
      const float* a = lin[u].data();
      float* out = s.unit(u);
      const int g = s.mode == GqaMode::kv ? u : u / G;
      double total = 0;
      for (i64 j = 0; j < s.n_c; ++j)
        if (!s.protect[j]) {
          if (!(a[j] >= 0) || !std::isfinite(a[j]))
            fail(spec(), "base scores", "caote needs non-negative attention-like scores, got " + std::to_string(a[j]) +
                                            " at position " + std::to_string(begin + j));
          total += a[j];
        }
      std::vector<double> o(dim, 0.0);
      if (total > 0)
        for (i64 j = 0; j < s.n_c; ++j)
          if (!s.protect[j] && a[j] > 0) {
            const float* v = d.v_row(g, begin + j);
            const double w = a[j] / total;
            for (int c = 0; c < dim; ++c) o[c] += w * v[c];
          }
      for (i64 j = 0; j < s.n_c; ++j) {
        if (s.protect[j]) continue;
        const double w = total > 0 ? a[j] / total : 0.0;
        if (w == 0) {
          out[j] = 0.0f;
          continue;
        }
        const float* v = d.v_row(g, begin + j);
        double sq = 0;
        for (int c = 0; c < dim; ++c) sq += (o[c] - v[c]) * (o[c] - v[c]);
        // w = 1: the only candidate with mass; evicting it empties the support (largest score).
        out[j] = w < 1.0 ? static_cast<float>(w / (1.0 - w) * std::sqrt(sq)) : std::numeric_limits<float>::max();
      }
    }
    s.log_space = false;
    return s;
  }

  std::unique_ptr<ScoredRule> base_;
};

KVSIM_RULE((RuleInfo{"caote",
                     "CAOTE (Goel et al. 2025): rank by the one-token eviction error a_j/(1-a_j) ||o - v_j||_2 of "
                     "the base's attention-like scores a (normalised over the candidates, o = sum a_j v_j)",
                     {{"base", "rule", "snapkv",
                       "attention-like scorer (snapkv, tova, h2o, expected, oracle, ...) or pyramid(...) (positional)"}},
                     /*in_all=*/false}),  // in "all"; "default" stays the set earlier results used
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = require_scored(r.get_rule_or(0, "snapkv"), "caote");
             if (!base->attention_like())
               r.error("base rule '" + base->spec() + "' does not score attention (use snapkv, tova, h2o, ...)");
             if (!base->plain() && base->wrapper_kind() != "pyramid")
               r.error("base rule '" + base->spec() +
                       "': caote wraps a scorer or pyramid(...); ada/critical re-allocate by attention, wrap caote's "
                       "base instead");
             return std::make_unique<CaoteRule>(r.canonical(), std::move(base));
           });

}  // namespace
}  // namespace kvsim
