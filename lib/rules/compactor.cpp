// compactor: Compactor (Chari & Van Durme 2025, arXiv 2507.08143; kvpress CompactorPress), rules
// doc 2.28: blend x z(leverage) + z(noncausal) over the span without its first `sink_start` and
// last `sink_end` tokens (protected), each score z-normalised over the layer's KV heads and those
// tokens ((s - mean) / max(std, 1e-6), std unbiased, as kvpress). kvpress's default blend is the
// compression ratio itself, which would make one budget's scores differ from another's; kvsim
// takes it as a parameter (0.35, kvpress's fallback). The leverage part is exact (2.27), where
// kvpress draws a random sketch.
#include <algorithm>
#include <cmath>

#include "rules/factory.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

void z_normalise(UnitScores& s) {
  double sum = 0;
  const auto n = static_cast<double>(s.score.size());
  for (float x : s.score) sum += x;
  const double mean = sum / n;
  double sq = 0;
  for (float x : s.score) sq += (x - mean) * (x - mean);
  const double sd = std::max(std::sqrt(sq / std::max(1.0, n - 1)), 1e-6);
  for (float& x : s.score) x = static_cast<float>((x - mean) / sd);
}

class CompactorRule : public ScoredRule {
 public:
  CompactorRule(std::string spec, double blend, i64 sink_start, i64 sink_end, i64 chunk)
      : ScoredRule(std::move(spec)), blend_(blend), start_(sink_start), end_(sink_end),
        leverage_(require_scored(make_rule("leverage"), "compactor")),
        noncausal_(require_scored(make_rule("noncausal(chunk=" + std::to_string(chunk) + ")"), "compactor")) {}

  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const i64 n = end - begin;
    const i64 left = std::min(start_, n), right = std::min(end_, std::max<i64>(0, n - left));
    UnitScores s(GqaMode::kv, in.data->num_kv_heads, n);
    s.protect_range(0, left);
    s.protect_range(n - right, n);
    if (n - left - right < 2) return s;
    UnitScores lev = leverage_->scores_range(in, begin + left, end - right);
    UnitScores att = noncausal_->scores_range(in, begin + left, end - right);
    z_normalise(lev);
    z_normalise(att);
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < lev.n_c; ++j)
        s.unit(u)[left + j] = static_cast<float>(blend_ * lev.unit(u)[j] + att.unit(u)[j]);
    return s;
  }

 private:
  double blend_;
  i64 start_, end_;
  std::unique_ptr<ScoredRule> leverage_, noncausal_;
};

KVSIM_RULE((RuleInfo{"compactor",
                     "Compactor (kvpress CompactorPress): blend x z(key leverage, exact) + z(non-causal chunked "
                     "attention) between protected sinks at both ends (needs every prompt query)",
                     {{"blend", "double >= 0", "0.35", "weight of the leverage z-score (kvpress: the compression ratio)"},
                      {"sink_start", "int >= 0", "8", "first tokens kept"},
                      {"sink_end", "int >= 0", "4", "last tokens before the compression point kept"},
                      {"chunk", "int >= 1", "256", "non-causal attention chunk"}},
                     /*in_all=*/false}),  // needs every prompt query stored
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const double blend = r.get_double("blend", 0.35, 0.0, 1e6);
             const i64 start = r.get_int("sink_start", 8, 0, 1 << 30);
             const i64 end = r.get_int("sink_end", 4, 0, 1 << 30);
             const i64 chunk = r.get_int("chunk", 256, 1, 1 << 20);
             return std::make_unique<CompactorRule>(r.canonical(), blend, start, end, chunk);
           });

}  // namespace
}  // namespace kvsim
