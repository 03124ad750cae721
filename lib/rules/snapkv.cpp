// snapkv(window, kernel, pool, agg, gqa, order) (rules doc 2.6): pooled observation-window
// attention; the window tokens are protected (they count inside the budget).
#include "rules/snapkv.h"

#include "kernels/kernels.h"
#include "rules/window_attention.h"

namespace kvsim {

SnapKVRule::SnapKVRule(std::string spec, SnapKVParams p) : ScoredRule(std::move(spec)), p_(p) {}

void snapkv_pool_reduce(const float* per_head, int num_heads, int group, i64 m, const SnapKVParams& p, float* out) {
  auto pool = [&](const float* x, float* y) {
    if (p.max_pool) kernels::max_pool1d(x, m, p.kernel, y);
    else kernels::avg_pool1d(x, m, p.kernel, y);
  };
  const int units = p.gqa.mode == GqaMode::kv ? num_heads / group : num_heads;
  if (p.pool_then_reduce || p.gqa.mode == GqaMode::query) {
    std::vector<float> pooled(static_cast<std::size_t>(num_heads) * m);
    for (int h = 0; h < num_heads; ++h) pool(per_head + h * m, pooled.data() + h * m);
    reduce_heads(pooled.data(), num_heads, group, m, m, p.gqa, out, m);
  } else {
    std::vector<float> reduced(static_cast<std::size_t>(units) * m);
    reduce_heads(per_head, num_heads, group, m, m, p.gqa, reduced.data(), m);
    for (int u = 0; u < units; ++u) pool(reduced.data() + u * m, out + u * m);
  }
}

QueryScoreRows SnapKVRule::query_rows(const RuleInput& in, i64 begin, i64 end) const {
  return window_attention_rows(in, begin, end, p_.window, spec());
}

UnitScores SnapKVRule::scores_range(const RuleInput& in, i64 begin, i64 end) const {
  const LayerData& d = *in.data;
  // Shared with the other rules of this layer that use the same window (RuleInput::window_memo).
  const auto att = in.window_memo ? in.window_memo->get(*in.meta, d, begin, end, p_.window, p_.mean, spec())
                                  : std::make_shared<const avec<float>>(
                                        window_attention(*in.meta, d, begin, end, p_.window, p_.mean, spec()));
  const i64 n = end - begin, m = n - p_.window;
  const int G = d.num_heads / d.num_kv_heads;
  UnitScores s(p_.gqa.mode, units_for(p_.gqa.mode, d), n);
  std::vector<float> red(static_cast<std::size_t>(s.units) * m);
  snapkv_pool_reduce(att->data(), d.num_heads, G, m, p_, red.data());
  for (int u = 0; u < s.units; ++u) std::copy_n(red.data() + u * m, m, s.unit(u));
  s.protect_range(m, n);
  return s;
}

namespace {

KVSIM_RULE((RuleInfo{"snapkv",
                     "SnapKV: pooled attention of the last `window` queries before the compression point; "
                     "window protected",
                     {{"window", "int", "32", "observation window w (queries; the w tokens are kept)"},
                      {"kernel", "int", "7", "pooling kernel, odd"},
                      {"pool", "choice avg|max", "max", "pooling (avg: zero padding, divides by kernel)"},
                      {"agg", "choice mean|sum", "mean", "aggregation over window queries (same ranking)"},
                      {"gqa", "choice mean|max|sum|query", "mean", "group reduction, or per query head"},
                      {"order", "choice pool_then_reduce|reduce_then_pool", "pool_then_reduce",
                       "kvpress pools per head then reduces; AdaKV/Factory reduce first"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             SnapKVParams p;
             p.window = r.get_int("window", 32, 1, 1 << 20);
             p.kernel = r.get_pool_kernel(7);
             p.max_pool = r.get_choice("pool", "max", {"avg", "max"}) == "max";
             p.mean = r.get_choice("agg", "mean", {"mean", "sum"}) == "mean";
             p.gqa = read_gqa(r);
             p.pool_then_reduce =
                 r.get_choice("order", "pool_then_reduce", {"pool_then_reduce", "reduce_then_pool"}) == "pool_then_reduce";
             return std::make_unique<SnapKVRule>(r.canonical(), p);
           });

}  // namespace
}  // namespace kvsim
