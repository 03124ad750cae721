// oracle: per unit, keep the top-B tokens by the exact attention mass the evaluation queries
// put on them (mean over evaluation queries, then the gqa group reduction) — the best any
// static rule could do for this query set, in the retained-mass sense.
#include "attention/layer_cache.h"
#include "core/error.h"
#include "rules/gqa.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class OracleRule : public ScoredRule {
 public:
  OracleRule(std::string spec, GqaChoice gqa) : ScoredRule(std::move(spec)), gqa_(gqa) {}
  bool attention_like() const override { return true; }
  UnitScores scores(const RuleInput& in) const override {
    if (!in.cache) fail(spec(), "", "needs the layer cache of evaluation attention");
    const LayerData& d = *in.data;
    const LayerCache& c = *in.cache;
    const i64 n_eval = c.n_eval(), n = in.n_c;
    if (n_eval == 0) fail(spec(), "", "no evaluation queries at or after the compression point");
    std::vector<float> mass(static_cast<std::size_t>(d.num_heads) * n, 0.0f);
    // Accumulated in double over the queries in order, then one rounding: the mean is exact to
    // float precision. The probability tiles in waves of one per thread, freed after use (the
    // metrics recompute them rather than the layer holding every head's probabilities at once).
    std::vector<double> acc(static_cast<std::size_t>(d.num_heads) * n, 0.0);
    const int G = d.num_heads / d.num_kv_heads;
    c.walk_tiles(QuerySet::eval, [&](int g0, int g1, i64 q0, i64 q1) {
#pragma omp parallel for schedule(dynamic)
      for (int h = g0 * G; h < g1 * G; ++h) {
        double* a = acc.data() + static_cast<std::size_t>(h) * n;
        for (i64 q = q0; q < q1; ++q) {
          const float* p = c.prob_row(QuerySet::eval, h, q);
          for (i64 j = 0; j < n; ++j) a[j] += p[j];
        }
      }
    }, true);
    for (std::size_t k = 0; k < acc.size(); ++k) mass[k] = static_cast<float>(acc[k] / static_cast<double>(n_eval));
    UnitScores s(gqa_.mode, units_for(gqa_.mode, d), n);
    reduce_heads(mass.data(), d.num_heads, d.num_heads / d.num_kv_heads, n, n, gqa_, s.score.data(), n);
    return s;
  }

 private:
  GqaChoice gqa_;
};

KVSIM_RULE((RuleInfo{"oracle",
                     "top-B tokens by the exact attention mass of the evaluation queries (static upper reference)",
                     {{"gqa", "choice mean|max|sum|query", "mean", "group reduction of the query heads, or per query head"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const GqaChoice g = read_gqa(r);
             return std::make_unique<OracleRule>(r.canonical(), g);
           });

}  // namespace
}  // namespace kvsim
