// simlayerkv: SimLayerKV (Zhang et al. 2024, arXiv 2410.13846; kvpress SimLayerKVPress), rules
// doc 2.25. A layer is "lazy" when the last `last` queries before the compression point put more
// than `threshold` of their attention (mean over query heads and those queries, the prefix
// columns as SnapKV's window attention, 2.6 step 1) on the first `initial` and the last `recent`
// prefix tokens; a lazy layer keeps the first `initial` tokens and the last recent - last ones,
// every other layer keeps everything. The budget is not used: the threshold decides, and each
// layer's kept tokens are reported as they are.
#include <algorithm>

#include "rules/registry.h"
#include "rules/window_attention.h"

namespace kvsim {
namespace {

class SimLayerKvRule : public Rule {
 public:
  SimLayerKvRule(std::string spec, double threshold, i64 last, i64 recent, i64 initial)
      : spec_(std::move(spec)), threshold_(threshold), last_(last), recent_(recent), initial_(initial) {}
  std::string spec() const override { return spec_; }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    const LayerData& d = *in.data;
    const i64 n = in.n_c;
    Selection s(GqaMode::kv, d.num_kv_heads, n);
    std::fill(s.kept.begin(), s.kept.end(), std::uint8_t{1});
    if (threshold_ < 1.0 && n > initial_ + recent_ + last_ && lazy(in)) {
      const i64 tail = recent_ - last_;  // kvpress keeps keys[-recent + last:]
      for (int g = 0; g < d.num_kv_heads; ++g)
        for (i64 j = initial_; j < n - tail; ++j) s.unit_mask(g)[j] = 0;
    }
    s.budget_tokens = s.kept_count(0);  // what the threshold gave, not a count it was asked for
    return std::vector<Selection>(budgets.size(), s);
  }

 private:
  bool lazy(const RuleInput& in) const {
    const LayerData& d = *in.data;
    const i64 m = in.n_c - last_;
    const avec<float> a = window_attention(*in.meta, d, 0, in.n_c, last_, /*mean=*/true, spec_);  // [H][m]
    double score = 0;
    for (int h = 0; h < d.num_heads; ++h) {
      const float* row = a.data() + static_cast<std::size_t>(h) * m;
      for (i64 j = 0; j < std::min(initial_, m); ++j) score += row[j];
      for (i64 j = std::max<i64>(0, m - recent_); j < m; ++j) score += row[j];
    }
    return score / d.num_heads > threshold_;
  }

  std::string spec_;
  double threshold_;
  i64 last_, recent_, initial_;
};

KVSIM_RULE((RuleInfo{"simlayerkv",
                     "SimLayerKV (kvpress SimLayerKVPress): lazy layers (attention of the last queries concentrated "
                     "on the first and recent tokens above threshold) keep only those; others keep all (budget unused)",
                     {{"threshold", "double [0, 1]", "0.9", "lazy-layer threshold (1 = never lazy)"},
                      {"last", "int >= 1", "1", "last queries whose attention decides"},
                      {"recent", "int >= 1", "1024", "recent tokens kept in a lazy layer (minus last)"},
                      {"initial", "int >= 0", "4", "initial tokens kept in a lazy layer"}},
                     /*in_all=*/false,
                     // Left out of "all": it ignores the budget (its threshold decides per layer).
                     /*example=*/"simlayerkv(threshold=0.9)"}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const double threshold = r.get_double("threshold", 0.9, 0.0, 1.0);
             const i64 last = r.get_int("last", 1, 1, 1 << 20);
             const i64 recent = r.get_int("recent", 1024, 1, 1 << 30);
             const i64 initial = r.get_int("initial", 4, 0, 1 << 30);
             if (recent <= last) r.error("parameter 'recent': must exceed 'last'");
             return std::make_unique<SimLayerKvRule>(r.canonical(), threshold, last, recent, initial);
           });

}  // namespace
}  // namespace kvsim
