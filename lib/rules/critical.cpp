// critical(base, alpha, eps, norm): CriticalKV on any attention-like base; critical(ada(...)) is
// CriticalAdaKV: head budgets come from Ada-KV on attention-only scores, then each head runs the
// two-stage selection with its own budget (rules doc 2.9).
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
  critical_select_unit(s, nu, protect, n, n_prot, k, static_cast<i64>(std::floor(alpha * static_cast<double>(k))),
                       eps, mask);
}

void critical_select_unit(const float* s, const float* nu, const std::uint8_t* protect, i64 n, i64 n_prot, i64 k,
                          i64 stage1_total, double eps, std::uint8_t* mask) {
  critical_select_unit(s, s, nu, protect, n, n_prot, k, stage1_total, eps, mask, nullptr);
}

void critical_select_unit(const float* rank, const float* s, const float* nu, const std::uint8_t* protect, i64 n,
                          i64 n_prot, i64 k, i64 stage1_total, double eps, std::uint8_t* mask, i64* tied) {
  if (tied) *tied = 0;
  for (i64 j = 0; j < n; ++j) mask[j] = protect[j];
  const i64 stage1 = std::max<i64>(0, stage1_total - n_prot);
  const std::vector<i64> first = rank_unprotected(rank, protect, n, std::min(stage1, k - n_prot));
  for (i64 j : first) mask[j] = 1;
  const i64 rest = k - n_prot - static_cast<i64>(first.size());
  if (rest <= 0) return;
  // Stage 2 over the tokens not yet kept: product score in fp32, like the reference press.
  std::vector<float> prod(n);
  const float e = static_cast<float>(eps);
  for (i64 j = 0; j < n; ++j) prod[j] = (s[j] + e) * nu[j];
  std::vector<std::uint8_t> candidate(mask, mask + n);  // stage 2 candidates: not yet kept
  for (auto& c : candidate) c = !c;
  for (i64 j : rank_unprotected(prod.data(), mask, n, rest)) mask[j] = 1;
  if (tied) *tied = ties_at_cut(prod.data(), candidate.data(), mask, n);
}

namespace {

class CriticalRule : public ScoredRule {
 public:
  CriticalRule(std::string spec, std::unique_ptr<ScoredRule> base, double alpha, double eps, NormKind norm,
               bool floor_in_stage1)
      : ScoredRule(std::move(spec)),
        base_(std::move(base)),
        alpha_(alpha),
        eps_(eps),
        norm_(norm),
        floor_in_stage1_(floor_in_stage1) {}
  bool plain() const override { return false; }
  bool attention_like() const override { return true; }
  std::string wrapper_kind() const override { return "critical"; }
  UnitScores scores(const RuleInput& in) const override { return base_->scores(in); }
  i64 layer_budget(const RuleInput& in, const UnitScores& s, i64 B, double exact) const override {
    return base_->layer_budget(in, s, B, exact);
  }
  std::vector<i64> unit_budgets(const RuleInput& in, const UnitScores& s, i64 B) const override {
    return base_->unit_budgets(in, s, B);
  }
  i64 forced_per_unit(const RuleInput& in, const UnitScores& s, i64 B) const override {
    return base_->forced_per_unit(in, s, B);
  }
  // Stage-1 tokens (protected included) of a unit keeping k. Uniform heads (CriticalKVPress):
  // int((1 - cr) n_c alpha) from the unrounded budget. Ada-KV heads (CriticalAdaKVPress):
  // int(B_h alpha), and the safeguard tokens the allocator forced stay forced through stage 2,
  // so stage 1 is effectively the top max(n_safe, int(B_h alpha)) unless floor_in_stage1=false.
  i64 stage1(const UnitCounts& c, i64 k) const {
    if (base_->wrapper_kind() != "ada") return static_cast<i64>(std::floor(c.exact * alpha_));
    const i64 own = static_cast<i64>(std::floor(static_cast<double>(k) * alpha_));
    return floor_in_stage1_ ? std::max(own, c.forced) : own;
  }
  std::vector<Selection> select_counts(const RuleInput& in, const UnitScores& s,
                                       const std::vector<UnitCounts>& counts) const override {
    if (!in.cache) fail(spec(), "", "needs the layer cache (projected value norms)");
    if (!in.data->has_o_proj())
      fail(in.meta->path, "/layers/" + std::to_string(in.layer) + "/o_proj",
           "missing; " + spec() + " needs W_o for the projected value norms");
    const LayerData& d = *in.data;
    const int G = d.num_heads / d.num_kv_heads;
    // nu per unit: the group mean of nu^h in kv mode (kvpress), nu^h in query mode. The heads'
    // norms first, in parallel (exact norms through W_o are the costly part of this rule).
    in.cache->precompute_norms(norm_);
    std::vector<float> nu(static_cast<std::size_t>(s.units) * s.n_c, 0.0f);
    for (int h = 0; h < d.num_heads; ++h) {
      const float* v = in.cache->value_norms(h, norm_);
      const int u = s.mode == GqaMode::kv ? h / G : h;
      const float wgt = s.mode == GqaMode::kv ? 1.0f / static_cast<float>(G) : 1.0f;
      for (i64 j = 0; j < s.n_c; ++j) nu[u * s.n_c + j] += wgt * v[j];
    }
    std::vector<Selection> out;
    for (std::size_t b = 0; b < counts.size(); ++b) {
      out.emplace_back(s.mode, s.units, s.n_c);
      out.back().tied_at_cut.assign(s.units, 0);
    }
#pragma omp parallel for schedule(dynamic)
    for (int u = 0; u < s.units; ++u) {
      // Stage 1 ranks by the score as it is (log space keeps the order); stage 2 needs masses.
      const std::vector<float> lin = s.log_space ? s.linear_scores(u) : std::vector<float>();
      for (std::size_t b = 0; b < counts.size(); ++b)
        critical_select_unit(s.unit(u), s.log_space ? lin.data() : s.unit(u), nu.data() + u * s.n_c,
                             s.protect.data(), s.n_c, s.n_protected, counts[b].count[u],
                             stage1(counts[b], counts[b].count[u]), eps_, out[b].unit_mask(u),
                             &out[b].tied_at_cut[u]);
    }
    return out;
  }

 private:
  std::unique_ptr<ScoredRule> base_;
  double alpha_, eps_;
  NormKind norm_;
  bool floor_in_stage1_;
};

KVSIM_RULE((RuleInfo{"critical",
                     "CriticalKV: stage 1 keeps the top alpha*B by the base score, stage 2 fills the rest by "
                     "(score+eps)*||v W_o||; critical(ada(...)) = CriticalAdaKV",
                     {{"base", "rule", "snapkv", "attention scorer, pyramid(...) or ada(...) (positional argument)"},
                      {"alpha", "double", "0.5", "first-stage share of the budget (window counts inside it)"},
                      {"eps", "double", "1e-04", "added to the base score before weighting by the value norm"},
                      {"norm", "choice l1|l2|upper", "l1",
                       "projected value norm ||v W_o||_1, _2, or the old upper bound sum|v||W|"},
                      {"floor_in_stage1", "bool", "true",
                       "critical(ada(...)): true = kvpress CriticalAdaKVPress, the Ada-KV safeguard tokens stay "
                       "forced, so stage 1 is the top max(n_safe, floor(alpha B_h)); false = the papers' "
                       "description, stage 1 is the top floor(alpha B_h) only"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = require_scored(r.get_rule_or(0, "snapkv"), "critical");
             if (!base->attention_like())
               r.error("base rule '" + base->spec() + "' does not score attention (use snapkv, ada(snapkv), ...)");
             if (base->wrapper_kind() == "critical") r.error("critical cannot wrap another critical rule");
             const double alpha = r.get_double("alpha", 0.5, 0.0, 1.0);
             const double eps = r.get_double("eps", 1e-4, 0.0, 1e9);
             const std::string norm = r.get_choice("norm", "l1", {"l1", "l2", "upper"});
             const NormKind kind = norm == "l1" ? NormKind::l1 : norm == "l2" ? NormKind::l2 : NormKind::upper;
             const bool floor_in_stage1 = r.get_bool("floor_in_stage1", true);
             return std::make_unique<CriticalRule>(r.canonical(), std::move(base), alpha, eps, kind, floor_in_stage1);
           });

}  // namespace
}  // namespace kvsim
