// defensive: DefensiveKV's defensive aggregation (Feng et al., "Taming the Fragility of KV Cache
// Eviction in LLM Inference", ICLR 2026; code FFY0/DefensiveKV), rules doc 2.24. The
// observation window's attention rows (as SnapKV's, 2.6 step 1) are each average-pooled along
// the prefix tokens and rescaled to keep their sum; a token's score is then the WORST case over
// the window queries, max_i, instead of SnapKV's mean (the paper's point: importance is not
// stable across queries), reduced over the group (max by default, as the paper), and floored at
// its mean over the prefix tokens (the prior correction: clamp(min = mean)). The window is
// protected. DefensiveKV itself is ada(defensive) with its CriticalKV-style value weighting
// (critical(ada(defensive)) in kvsim's spelling, whose second stage is kvsim's critical(...)).
#include <algorithm>

#include "rules/defensive.h"

#include "kernels/kernels.h"
#include "rules/gqa.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"
#include "rules/window_attention.h"

namespace kvsim {

DefensiveWindow defensive_window(const QueryScoreRows& rows, int num_heads, int num_kv_heads, int kernel, bool raw) {
  const i64 m = rows.m, w = rows.queries;
  const int G = num_heads / num_kv_heads;
  // Queries per fill: the whole window at once; long histories (h2o's prompt) in blocks.
  const i64 block = w <= 256 ? w : 64;
  DefensiveWindow out;
  out.m = m;
  out.worst.assign(static_cast<std::size_t>(num_heads) * m, 0.0f);
  std::vector<double> head_raw(raw ? static_cast<std::size_t>(num_heads) * m : 0, 0.0);
  std::vector<double> head_bias(num_heads, 0.0);
#pragma omp parallel
  {
    avec<float> blk(static_cast<std::size_t>(block * m)), pooled(m);
#pragma omp for schedule(dynamic)
    for (int h = 0; h < num_heads; ++h) {
      float* out_h = out.worst.data() + static_cast<std::size_t>(h) * m;
      for (i64 i0 = 0; i0 < w; i0 += block) {
        const i64 i1 = std::min(w, i0 + block);
        rows.fill(h, i0, i1, blk.data());
        for (i64 i = 0; i < i1 - i0; ++i) {
          const float* row = blk.data() + i * m;
          // Pool the prefix part of the row, then rescale it to the row's own prefix sum.
          double mass = 0, after = 0;
          for (i64 j = 0; j < m; ++j) mass += row[j];
          if (kernel > 1) kernels::avg_pool1d(row, m, kernel, pooled.data());
          else std::copy_n(row, m, pooled.data());
          for (i64 j = 0; j < m; ++j) after += pooled[j];
          const float scale = after > 0 ? static_cast<float>(mass / after) : 0.0f;
          for (i64 j = 0; j < m; ++j) out_h[j] = std::max(out_h[j], pooled[j] * scale);
          if (!raw) continue;
          double* r = head_raw.data() + static_cast<std::size_t>(h) * m;
          for (i64 j = 0; j < m; ++j) r[j] += row[j];
          for (i64 j = std::max<i64>(0, m - w); j < m; ++j) head_bias[h] += row[j];
        }
      }
    }
  }
  if (raw) {
    out.mean_raw.assign(static_cast<std::size_t>(num_kv_heads) * m, 0.0);
    for (int h = 0; h < num_heads; ++h)
      for (i64 j = 0; j < m; ++j)
        out.mean_raw[static_cast<std::size_t>(h / G) * m + j] +=
            head_raw[static_cast<std::size_t>(h) * m + j] / static_cast<double>(G * w);
    for (double b : head_bias) out.window_bias += b / static_cast<double>(num_heads * w);
  }
  return out;
}

DefensiveWindow defensive_window(const RuleInput& in, i64 begin, i64 end, i64 window, int kernel, bool raw,
                                 const std::string& who) {
  return defensive_window(window_attention_rows(in, begin, end, window, who), in.data->num_heads,
                          in.data->num_kv_heads, kernel, raw);
}

namespace {

struct DefensiveParams {
  i64 window = 32;
  int kernel = 5;
  GqaChoice gqa;
  bool prior = true;
};

// defensive (the window's attention rows) or defensive(base) (the base's per-query rows).
class DefensiveRule : public ScoredRule {
 public:
  DefensiveRule(std::string spec, DefensiveParams p, std::unique_ptr<ScoredRule> base)
      : ScoredRule(std::move(spec)), p_(p), base_(std::move(base)) {}
  bool attention_like() const override { return !base_ || base_->attention_like(); }

  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const LayerData& d = *in.data;
    const DefensiveWindow win =
        base_ ? defensive_window(base_->query_rows(in, begin, end), d.num_heads, d.num_kv_heads, p_.kernel, false)
              : defensive_window(in, begin, end, p_.window, p_.kernel, false, spec());
    const i64 L = end - begin, m = win.m;
    const int G = d.num_heads / d.num_kv_heads;
    const avec<float>& per_head = win.worst;
    UnitScores s(p_.gqa.mode, units_for(p_.gqa.mode, d), L);
    std::vector<float> red(static_cast<std::size_t>(s.units) * m);
    reduce_heads(per_head.data(), d.num_heads, G, m, m, p_.gqa, red.data(), m);
    for (int u = 0; u < s.units; ++u) {
      float* x = s.unit(u);
      std::copy_n(red.data() + u * m, m, x);
      if (!p_.prior || m == 0) continue;
      double mean = 0;
      for (i64 j = 0; j < m; ++j) mean += x[j];
      const float floor = static_cast<float>(mean / static_cast<double>(m));
      for (i64 j = 0; j < m; ++j) x[j] = std::max(x[j], floor);
    }
    s.protect_range(m, L);
    return s;
  }

 private:
  DefensiveParams p_;
  std::unique_ptr<ScoredRule> base_;
};

KVSIM_RULE((RuleInfo{"defensive",
                     "DefensiveKV's defensive aggregation: pooled per-query rows (the window's attention, or a base's "
                     "own rows), the worst case (max) over the queries and the group, floored at its mean (prior "
                     "correction); the base's window (or `window`) protected",
                     {{"base", "rule", "",
                       "optional: a scorer with per-query rows (snapkv, dropkv, h2o one-shot), positional; without "
                       "one, the window queries' attention"},
                      {"window", "int", "32", "observation window w (queries; the w tokens are kept); without a base"},
                      {"kernel", "int", "5", "average pooling kernel per row, odd (1: none)"},
                      {"gqa", "choice mean|max|sum|query", "max", "group reduction, or per query head"},
                      {"prior", "bool", "true", "floor the scores at their mean over the prefix (prior correction)"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             DefensiveParams p;
             std::unique_ptr<ScoredRule> base;
             if (!r.spec().args.empty()) {
               base = require_scored(r.get_rule(0), "defensive");
               if (!base->plain())
                 r.error("base rule '" + base->spec() +
                         "': defensive takes the worst case of a plain scorer's per-query rows; wrap defensive(...) "
                         "in ada/critical/pyramid instead");
               if (!base->has_query_rows())
                 r.error("base rule '" + base->spec() +
                         "' has no per-query score rows to take the worst case of (snapkv, dropkv and one-shot h2o do)");
             } else {
               p.window = r.get_int("window", 32, 1, 1 << 20);
             }
             p.kernel = r.get_pool_kernel(5);
             p.gqa = read_gqa(r, "max");
             p.prior = r.get_bool("prior", true);
             return std::make_unique<DefensiveRule>(r.canonical(), p, std::move(base));
           });

}  // namespace
}  // namespace kvsim
