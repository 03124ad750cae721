// critical(base, alpha, eps, norm): CriticalKV on any attention-like base; critical(ada(...)) is
// CriticalAdaKV: head budgets come from Ada-KV on attention-only scores, then each head runs the
// two-stage selection with its own budget (spec 2.9).
#include "rules/critical.h"

#include <algorithm>
#include <cmath>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {

void critical_select_unit(const float* s, const float* nu, const std::uint8_t* protect, i64 n, i64 n_prot, i64 k,
                          double alpha, double eps, std::uint8_t* mask) {
  for (i64 j = 0; j < n; ++j) mask[j] = protect[j];
  const i64 stage1 = std::max<i64>(0, static_cast<i64>(std::floor(alpha * static_cast<double>(k))) - n_prot);
  const std::vector<i64> first = rank_unprotected(s, protect, n, std::min(stage1, k - n_prot));
  for (i64 j : first) mask[j] = 1;
  const i64 rest = k - n_prot - static_cast<i64>(first.size());
  if (rest <= 0) return;
  // Stage 2 over the tokens not yet kept: product score in fp32, like the reference press.
  std::vector<float> prod(n);
  const float e = static_cast<float>(eps);
  for (i64 j = 0; j < n; ++j) prod[j] = (s[j] + e) * nu[j];
  for (i64 j : rank_unprotected(prod.data(), mask, n, rest)) mask[j] = 1;
}

namespace {

class CriticalRule : public ScoredRule {
 public:
  CriticalRule(std::string spec, std::unique_ptr<ScoredRule> base, double alpha, double eps, NormKind norm)
      : ScoredRule(std::move(spec)), base_(std::move(base)), alpha_(alpha), eps_(eps), norm_(norm) {}
  bool plain() const override { return false; }
  bool attention_like() const override { return true; }
  std::string wrapper_kind() const override { return "critical"; }
  UnitScores scores(const RuleInput& in) const override { return base_->scores(in); }
  i64 layer_budget(const RuleInput& in, const UnitScores& s, i64 B) const override {
    return base_->layer_budget(in, s, B);
  }
  std::vector<i64> unit_budgets(const RuleInput& in, const UnitScores& s, i64 B) const override {
    return base_->unit_budgets(in, s, B);
  }
  std::vector<Selection> select_counts(const RuleInput& in, const UnitScores& s,
                                       const std::vector<std::vector<i64>>& counts) const override {
    if (!in.cache) fail(spec(), "", "needs the layer cache (projected value norms)");
    if (!in.data->has_o_proj())
      fail(in.meta->path, "/layers/" + std::to_string(in.layer) + "/o_proj",
           "missing; " + spec() + " needs W_o for the projected value norms");
    const LayerData& d = *in.data;
    const int G = d.num_heads / d.num_kv_heads;
    // nu per unit: the group mean of nu^h in kv mode (kvpress), nu^h in query mode.
    std::vector<float> nu(static_cast<std::size_t>(s.units) * s.n_c, 0.0f);
    for (int h = 0; h < d.num_heads; ++h) {
      const float* v = in.cache->value_norms(h, norm_);
      const int u = s.mode == GqaMode::kv ? h / G : h;
      const float wgt = s.mode == GqaMode::kv ? 1.0f / static_cast<float>(G) : 1.0f;
      for (i64 j = 0; j < s.n_c; ++j) nu[u * s.n_c + j] += wgt * v[j];
    }
    std::vector<Selection> out;
    for (std::size_t b = 0; b < counts.size(); ++b) out.emplace_back(s.mode, s.units, s.n_c);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int u = 0; u < s.units; ++u)
      for (std::size_t b = 0; b < counts.size(); ++b)
        critical_select_unit(s.unit(u), nu.data() + u * s.n_c, s.protect.data(), s.n_c, s.n_protected, counts[b][u],
                             alpha_, eps_, out[b].unit_mask(u));
    return out;
  }

 private:
  std::unique_ptr<ScoredRule> base_;
  double alpha_, eps_;
  NormKind norm_;
};

KVSIM_RULE((RuleInfo{"critical",
                     "CriticalKV: stage 1 keeps the top alpha*B by the base score, stage 2 fills the rest by "
                     "(score+eps)*||v W_o||; critical(ada(...)) = CriticalAdaKV",
                     {{"base", "rule", "snapkv", "attention scorer, pyramid(...) or ada(...) (positional argument)"},
                      {"alpha", "double", "0.5", "first-stage share of the budget (window counts inside it)"},
                      {"eps", "double", "1e-04", "added to the base score before weighting by the value norm"},
                      {"norm", "choice l1|l2|upper", "l1",
                       "projected value norm ||v W_o||_1, _2, or the old upper bound sum|v||W|"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = require_scored(r.get_rule_or(0, "snapkv"), "critical");
             if (!base->attention_like())
               r.error("base rule '" + base->spec() + "' does not score attention (use snapkv, ada(snapkv), ...)");
             if (base->wrapper_kind() == "critical") r.error("critical cannot wrap another critical rule");
             const double alpha = r.get_double("alpha", 0.5, 0.0, 1.0);
             const double eps = r.get_double("eps", 1e-4, 0.0, 1e9);
             const std::string norm = r.get_choice("norm", "l1", {"l1", "l2", "upper"});
             const NormKind kind = norm == "l1" ? NormKind::l1 : norm == "l2" ? NormKind::l2 : NormKind::upper;
             return std::make_unique<CriticalRule>(r.canonical(), std::move(base), alpha, eps, kind);
           });

}  // namespace
}  // namespace kvsim
