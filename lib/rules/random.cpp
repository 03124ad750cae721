// random(seed): i.i.d. uniform scores per (KV head, token), top-B per KV head (rules doc 2.1).
#include "rules/random_scores.h"

#include "core/splitmix.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {

float random_score(std::uint64_t seed, int layer, int unit, i64 pos) {
  // splitmix64 of a counter: reproducible on every platform, independent of std:: distributions.
  const std::uint64_t z = splitmix64(seed ^ (kSplitmixGolden * (static_cast<std::uint64_t>(layer) + 1)) ^
                                     (0xBF58476D1CE4E5B9ull * (static_cast<std::uint64_t>(unit) + 1)) ^
                                     (0x94D049BB133111EBull * (static_cast<std::uint64_t>(pos) + 1)));
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // 24 bits -> [0, 1)
}

namespace {

class RandomRule : public ScoredRule {
 public:
  RandomRule(std::string spec, std::uint64_t seed) : ScoredRule(std::move(spec)), seed_(seed) {}
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    UnitScores s(GqaMode::kv, in.data->num_kv_heads, end - begin);
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < s.n_c; ++j) s.unit(u)[j] = random_score(seed_, in.layer, u, begin + j);
    return s;
  }

 private:
  std::uint64_t seed_;
};

KVSIM_RULE((RuleInfo{"random", "uniform random scores per KV head and token (floor baseline)",
                     {{"seed", "int", "0", "random seed (scores also depend on layer, head, position)"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const auto seed = r.get_int("seed", 0, 0, (1ll << 62));
             return std::make_unique<RandomRule>(r.canonical(), static_cast<std::uint64_t>(seed));
           });

}  // namespace
}  // namespace kvsim
