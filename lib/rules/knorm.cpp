// knorm: keep the LOW-norm keys, score -||k_j||_2 per KV head (rules doc 2.3). Nothing protected.
// The squares are summed in channel order in float32, as torch.linalg.vector_norm does for a
// head's few channels, so keys whose norms differ in the last bit rank as in kvpress.
#include <cmath>

#include "kernels/kernels.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class KnormRule : public ScoredRule {
 public:
  using ScoredRule::ScoredRule;
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const LayerData& d = *in.data;
    UnitScores s(GqaMode::kv, d.num_kv_heads, end - begin);
    for (int g = 0; g < d.num_kv_heads; ++g)
      for (i64 j = 0; j < s.n_c; ++j) {
        const float* k = d.k_row(g, begin + j);
        float acc = 0.0f;
        for (int c = 0; c < d.head_dim; ++c) acc += k[c] * k[c];
        s.unit(g)[j] = -std::sqrt(acc);
      }
    return s;
  }
};

KVSIM_RULE((RuleInfo{"knorm", "keep the keys with the smallest L2 norm, per KV head", {}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> { return std::make_unique<KnormRule>(r.canonical()); });

}  // namespace
}  // namespace kvsim
