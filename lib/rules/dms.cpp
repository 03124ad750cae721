// dms(base): DMS (Łańcucki et al. 2025, arXiv 2506.05345; kvpress DMSPress, dense-prefill
// version without trained evictors), rules doc 2.23: the base's scores with the last `window`
// tokens before the compression point protected (DMS's sliding window). Meant for threshold
// budgets (thr=X: every candidate the base scores >= X stays, so each head keeps its own count,
// reported as kept_tokens); under a count budget it is the base with a protected recent window.
#include <algorithm>

#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class DmsRule : public ScoredRule {
 public:
  DmsRule(std::string spec, std::unique_ptr<ScoredRule> base, i64 window)
      : ScoredRule(std::move(spec)), base_(std::move(base)), window_(window) {}
  bool attention_like() const override { return base_->attention_like(); }
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    UnitScores s = base_->scores_range(in, begin, end);
    s.protect_range(std::max<i64>(0, s.n_c - window_), s.n_c);
    return s;
  }

 private:
  std::unique_ptr<ScoredRule> base_;
  i64 window_;
};

KVSIM_RULE((RuleInfo{"dms",
                     "DMS (kvpress DMSPress): a plain scorer with the last window tokens protected; with a threshold "
                     "budget thr=X every token the base scores >= X stays (kept counts vary by head)",
                     {{"base", "rule", "knorm", "a plain scorer (positional)"},
                      {"window", "int >= 0", "128", "recent tokens never evicted (DMS's sliding window)"}},
                     /*in_all=*/false,
                     // Left out of "all": its window of 128 exceeds the count budgets short traces get there;
                     // it is meant for threshold budgets (thr=X).
                     /*example=*/"dms(knorm,window=128)"}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = require_scored(r.get_rule_or(0, "knorm"), "dms");
             if (!base->plain()) r.error("base rule '" + base->spec() + "': dms wraps a plain scorer");
             const i64 window = r.get_int("window", 128, 0, 1 << 30);
             return std::make_unique<DmsRule>(r.canonical(), std::move(base), window);
           });

}  // namespace
}  // namespace kvsim
