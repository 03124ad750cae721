// pyramid(base, beta, variant): layer-wise budgets on top of a SnapKV-like scorer (rules doc 2.7).
#include "rules/pyramid.h"

#include <cmath>

#include "core/error.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {

std::vector<i64> pyramid_int_nonwindow(int L, i64 B, i64 w, double beta, i64 n) {
  const i64 b = B - w;
  if (L <= 1) return std::vector<i64>(std::max(L, 1), b);
  i64 mn = static_cast<i64>(std::floor(static_cast<double>(b) / beta));
  i64 mx = 2 * b - mn;
  if (mx >= n - w) {
    mx = n - w;
    mn = 2 * b - mx;
  }
  const i64 step = (mx - mn) / (L - 1);  // both >= 0 here: floor division
  std::vector<i64> out(L);
  for (int l = 0; l < L; ++l) out[l] = mx - l * step;
  return out;
}

std::vector<i64> pyramid_float_kept(int L, double B, i64 w, double beta, i64 n) {
  // kvpress: max_capacity_prompt = w + n (1 - cr), so (max_capacity_prompt - w) = B unrounded;
  // the fallback is max(1, round(n (1 - cr))). Python round() = round half to even = nearbyint.
  std::vector<i64> uniform(std::max(L, 1), std::max<i64>(1, static_cast<i64>(std::nearbyint(B))));
  if (L <= 1) return uniform;
  const double cap = static_cast<double>(w) + B;  // operand order as kvpress, then - w
  double mn = (cap - static_cast<double>(w)) / beta;
  double mx = (cap - static_cast<double>(w)) * 2.0 - mn;
  if (mx >= static_cast<double>(n - w)) {
    mx = static_cast<double>(n - w);
    mn = (cap - static_cast<double>(w)) * 2.0 - mx;
  }
  if (!(static_cast<double>(n) >= mx && mx >= mn && mn >= static_cast<double>(w))) return uniform;
  std::vector<i64> out(L);
  const double step = (mx - mn) / (L - 1);
  for (int l = 0; l < L; ++l) out[l] = static_cast<i64>(std::nearbyint(mx - l * step));  // Python round()
  return out;
}

namespace {

class PyramidRule : public ScoredRule {
 public:
  PyramidRule(std::string spec, std::unique_ptr<ScoredRule> base, double beta, bool integer)
      : ScoredRule(std::move(spec)), base_(std::move(base)), beta_(beta), integer_(integer) {}
  bool plain() const override { return false; }
  bool attention_like() const override { return true; }
  std::string wrapper_kind() const override { return "pyramid"; }
  UnitScores scores(const RuleInput& in) const override { return base_->scores(in); }
  i64 layer_budget(const RuleInput& in, const UnitScores& s, i64 B, double exact) const override {
    const i64 w = s.n_protected;
    const int L = in.meta->num_layers;
    if (B < w)
      fail(spec(), "budget", std::to_string(B) + " tokens per head are fewer than the " + std::to_string(w) +
                                 " protected window tokens");
    if (integer_) return pyramid_int_nonwindow(L, B, w, beta_, in.n_c)[in.layer] + w;
    return pyramid_float_kept(L, exact, w, beta_, in.n_c)[in.layer];
  }
  std::vector<Selection> select_counts(const RuleInput& in, const UnitScores& s,
                                       const std::vector<UnitCounts>& c) const override {
    return base_->select_counts(in, s, c);
  }

 private:
  std::unique_ptr<ScoredRule> base_;
  double beta_;
  bool integer_;
};

KVSIM_RULE((RuleInfo{"pyramid",
                     "PyramidKV: per-layer budgets decreasing linearly with depth over a SnapKV-like base",
                     {{"base", "rule", "snapkv", "attention scorer (positional argument), e.g. snapkv(window=8)"},
                      {"beta", "double", "20", "max/min layer budget ratio parameter (min = b/beta)"},
                      {"variant", "choice int|float", "float",
                       "int: original integer steps, window on top of b = B - w, total overshoots L*B; "
                       "float: kvpress PyramidKVPress, window inside, schedule from the unrounded kept count "
                       "n_c (1 - cr), Python rounding; average B"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = require_scored(r.get_rule_or(0, "snapkv"), "pyramid");
             if (!base->plain() || !base->attention_like())
               r.error("base rule '" + base->spec() +
                       "' must be an attention-score rule such as snapkv (write ada(pyramid(snapkv)) for Ada-Pyramid)");
             const double beta = r.get_double("beta", 20, 1e-9, 1e9);
             // float by default (rules doc 2.7): the same kept-token count as every other rule.
             const bool integer = r.get_choice("variant", "float", {"int", "float"}) == "int";
             return std::make_unique<PyramidRule>(r.canonical(), std::move(base), beta, integer);
           });

}  // namespace
}  // namespace kvsim
