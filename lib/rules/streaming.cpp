// streaming(sink): StreamingLLM one-shot (rules doc 2.2): the first `sink` tokens are protected and
// the most recent B - sink tokens before the compression point fill the rest of the budget.
// No positional re-rotation (post-RoPE traces cannot re-rotate; rules doc 2.2 pitfall).
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class StreamingRule : public ScoredRule {
 public:
  StreamingRule(std::string spec, i64 sink) : ScoredRule(std::move(spec)), sink_(sink) {}
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    UnitScores s(GqaMode::kv, in.data->num_kv_heads, end - begin);
    // Score = position: the top-k of the unprotected tokens are the most recent ones.
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < s.n_c; ++j) s.unit(u)[j] = static_cast<float>(j);
    s.protect_range(0, sink_);
    return s;
  }

 private:
  i64 sink_;
};

KVSIM_RULE((RuleInfo{"streaming", "StreamingLLM: first `sink` tokens + the most recent ones (no re-rotation)",
                     {{"sink", "int", "4", "attention-sink tokens kept at the start (count inside the budget)"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const auto sink = r.get_int("sink", 4, 0, 1 << 30);
             return std::make_unique<StreamingRule>(r.canonical(), sink);
           });

}  // namespace
}  // namespace kvsim
