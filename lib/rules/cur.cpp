// cur: CurDKV (Sengupta et al. 2025, arXiv 2509.15038; kvpress CURPress), rules doc 2.21. Leverage
// proxies of keys and values, k2_j = ||k_j||^2 and v2_j = ||v_j||^2 per KV head, each divided by
// its sum over its block of `local` consecutive tokens (local approximation; 0 = not divided),
// combined as k2 v2 (kv_product, the default), (k2 + v2) / 2 (kv_avg), k2 (key) or v2 (value).
// The first `sink` tokens are protected (kvpress sets their score to 1). kvpress's random
// projection option (use_random_leverage) draws a fresh Gaussian matrix per call and is not
// replayable; kvsim leaves it out.
#include <algorithm>

#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

enum class Leverage { key, value, kv_avg, kv_product };

class CurRule : public ScoredRule {
 public:
  CurRule(std::string spec, i64 sink, Leverage type, i64 local)
      : ScoredRule(std::move(spec)), sink_(sink), type_(type), local_(local) {}
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const LayerData& d = *in.data;
    const i64 n = end - begin;
    UnitScores s(GqaMode::kv, d.num_kv_heads, n);
    s.protect_range(0, std::min(sink_, n));
    for (int g = 0; g < d.num_kv_heads; ++g) {
      std::vector<float> k2(n), v2(n);
      for (i64 j = 0; j < n; ++j) {  // squares summed in channel order in float32 (as knorm)
        float a = 0, b = 0;
        const float* k = d.k_row(g, begin + j);
        const float* v = d.v_row(g, begin + j);
        for (int c = 0; c < d.head_dim; ++c) {
          a += k[c] * k[c];
          b += v[c] * v[c];
        }
        k2[j] = a;
        v2[j] = b;
      }
      if (local_ > 0)
        for (auto* x : {&k2, &v2})
          for (i64 b0 = 0; b0 < n; b0 += local_) {
            const i64 b1 = std::min(n, b0 + local_);
            float sum = 0;
            for (i64 j = b0; j < b1; ++j) sum += (*x)[j];
            for (i64 j = b0; j < b1; ++j) (*x)[j] /= sum;
          }
      float* out = s.unit(g);
      for (i64 j = 0; j < n; ++j)
        out[j] = type_ == Leverage::key      ? k2[j]
                 : type_ == Leverage::value  ? v2[j]
                 : type_ == Leverage::kv_avg ? (k2[j] + v2[j]) / 2
                                             : k2[j] * v2[j];
    }
    return s;
  }

 private:
  i64 sink_;
  Leverage type_;
  i64 local_;
};

KVSIM_RULE((RuleInfo{"cur",
                     "CurDKV (kvpress CURPress): key and value leverage proxies ||k||^2, ||v||^2 normalised per block "
                     "of local tokens, combined (product by default)",
                     {{"sink", "int >= 0", "4", "leading tokens kept"},
                      {"type", "choice kv_product|kv_avg|key|value", "kv_product", "how key and value leverage combine"},
                      {"local", "int >= 0", "16", "block of the local normalisation; 0 = none"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const i64 sink = r.get_int("sink", 4, 0, 1 << 30);
             const std::string t = r.get_choice("type", "kv_product", {"kv_product", "kv_avg", "key", "value"});
             const i64 local = r.get_int("local", 16, 0, 1 << 30);
             const Leverage type = t == "key" ? Leverage::key
                                   : t == "value" ? Leverage::value
                                   : t == "kv_avg" ? Leverage::kv_avg
                                                   : Leverage::kv_product;
             return std::make_unique<CurRule>(r.canonical(), sink, type, local);
           });

}  // namespace
}  // namespace kvsim
