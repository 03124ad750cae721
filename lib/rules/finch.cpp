// finch: FINCH (Corallo & Papotti, TACL 2024; kvpress FinchPress), rules doc 2.26: SnapKV whose
// observation window is the question itself. The window is the run of question tokens (trace
// segment 1) that ends the compressed span, so it needs the question-aware protocol
// (--compression-point aware); kvpress finds the same boundary with a delimiter token. Each
// window query's attention row (softmax over its causal prefix, window columns dropped without
// renormalising) is multiplied by the query's number of earlier tokens (kvpress's
// normalize_scores: t - begin), averaged over the window and the group; no pooling; the question
// is protected. chunk=L: kvpress's chunk_length, a share of every chunk of L tokens.
#include <algorithm>

#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/gqa.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"
#include "rules/window_attention.h"

namespace kvsim {
namespace {

class FinchRule : public ScoredRule {
 public:
  FinchRule(std::string spec, bool normalize, GqaChoice gqa, i64 chunk)
      : ScoredRule(std::move(spec)), normalize_(normalize), gqa_(gqa), chunk_(chunk) {}
  bool attention_like() const override { return true; }
  bool takes_threshold() const override { return chunk_ == 0; }

  // chunk > 0 (kvpress chunk_length): the same scores, and every chunk of the span keeps the
  // budget's share of its own tokens (kvpress compute_n_kept(chunk, cr)), its protected tokens
  // (the question, in the last chunks) included.
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    if (chunk_ == 0) return ScoredRule::select(in, budgets);
    const UnitScores s = scores(in);
    std::vector<Selection> out;
    for (const Budget& b : budgets) {
      Selection sel(s.mode, s.units, s.n_c);
      sel.budget_tokens = 0;
      for (i64 c0 = 0; c0 < s.n_c; c0 += chunk_) {
        const i64 len = std::min(chunk_, s.n_c - c0);
        const i64 keep = b.share_of(len, in.n_c);
        for (int u = 0; u < s.units; ++u) {
          std::uint8_t* m = sel.unit_mask(u) + c0;
          // A short last chunk can hold more question tokens than its share: kvpress's top-k over
          // their equal (maximal) scores then keeps only the share of them; here the earliest.
          i64 left = keep;
          for (i64 j = 0; j < len; ++j) left -= m[j] = s.protect[c0 + j] && left > 0;
          if (left > 0)
            for (i64 j : rank_unprotected(s.unit(u) + c0, s.protect.data() + c0, len, left)) m[j] = 1;
        }
        sel.budget_tokens += keep;
      }
      out.push_back(std::move(sel));
    }
    return out;
  }

  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const TraceMeta& meta = *in.meta;
    const LayerData& d = *in.data;
    i64 w = 0;  // the question tokens that end the span
    while (end - w - 1 >= begin && static_cast<std::size_t>(end - w - 1) < meta.segment.size() &&
           meta.segment[static_cast<std::size_t>(end - w - 1)] == kQuestion)
      ++w;
    if (w == 0)
      fail(spec(), "protocol",
           "no question tokens end the compressed span: FINCH's window is the question (use --compression-point "
           "aware)");
    const i64 L = end - begin, m = L - w, dh = d.head_dim;
    const std::vector<i64> rows = window_query_rows(meta, d, begin, end, w, spec());
    const int G = d.num_heads / d.num_kv_heads;
    avec<float> per_head(static_cast<std::size_t>(d.num_heads) * m, 0.0f);
#pragma omp parallel
    {
      avec<float> qw(w * dh), probs(w * L);
#pragma omp for schedule(dynamic)
      for (int h = 0; h < d.num_heads; ++h) {
        window_probability_rows(meta, d, h, rows, begin, end, qw.data(), probs.data());
        float* out = per_head.data() + static_cast<std::size_t>(h) * m;
        for (i64 i = 0; i < w; ++i) {
          const float* row = probs.data() + i * L;
          const float weight = normalize_ ? static_cast<float>(m + i) : 1.0f;  // kvpress: arange(k_len - w, k_len)
          for (i64 j = 0; j < m; ++j) out[j] += row[j] * weight;
        }
        for (i64 j = 0; j < m; ++j) out[j] /= static_cast<float>(w);
      }
    }
    UnitScores s(gqa_.mode, units_for(gqa_.mode, d), L);
    std::vector<float> red(static_cast<std::size_t>(s.units) * m);
    reduce_heads(per_head.data(), d.num_heads, G, m, m, gqa_, red.data(), m);
    for (int u = 0; u < s.units; ++u) std::copy_n(red.data() + u * m, m, s.unit(u));
    s.protect_range(m, L);
    return s;
  }

 private:
  bool normalize_;
  GqaChoice gqa_;
  i64 chunk_;
};

KVSIM_RULE((RuleInfo{"finch",
                     "FINCH (kvpress FinchPress): SnapKV with the question as its window (question-aware protocol), "
                     "rows weighted by their causal length, no pooling; the question is kept",
                     {{"normalize", "bool", "true", "weight each window row by its number of earlier tokens"},
                      {"gqa", "choice mean|max|sum|query", "mean", "group reduction, or per query head"},
                      {"chunk", "int", "0",
                       "kvpress chunk_length: every chunk of this many tokens keeps the budget's share of itself "
                       "(0: one top-k over the span)"}},
                     /*in_all=*/false,
                     // Left out of "all": it needs the question inside the span (--compression-point aware).
                     /*example=*/"finch"}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const bool normalize = r.get_bool("normalize", true);
             const GqaChoice gqa = read_gqa(r);
             const i64 chunk = r.get_int("chunk", 0, 0, 1LL << 40);
             return std::make_unique<FinchRule>(r.canonical(), normalize, gqa, chunk);
           });

}  // namespace
}  // namespace kvsim
