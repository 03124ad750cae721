// chunk(base, len): ChunkPress (rules doc 2.14): score each chunk of `len` tokens on its own (as if
// the chunk were the whole context, so SnapKV uses the chunk's last queries as its window) and
// keep max(1, floor(len_c * f)) tokens per chunk, f = B / n_c.
// chunkkv(base, len): ChunkKV: chunk score = mean over the chunk of the base scores summed over
// units; every unit keeps the same top max(1, floor(n_chunks * f)) chunks. Chunks holding
// protected tokens (window, sinks) are always kept (kvpress pads those scores to the maximum).
// Both keep whole chunks or per-chunk counts, so the effective kept count differs from B; the
// replay reports Selection::kept_count.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class ChunkRule : public Rule {
 public:
  ChunkRule(std::string spec, std::unique_ptr<ScoredRule> base, i64 len)
      : spec_(std::move(spec)), base_(std::move(base)), len_(len) {}
  std::string spec() const override { return spec_; }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    std::vector<Selection> out;
    for (i64 c0 = 0; c0 < in.n_c; c0 += len_) {
      const i64 c1 = std::min(in.n_c, c0 + len_), n = c1 - c0;
      const UnitScores s = base_->scores_range(in, c0, c1);
      if (out.empty())
        for (std::size_t b = 0; b < budgets.size(); ++b) out.emplace_back(s.mode, s.units, in.n_c);
      std::vector<UnitCounts> counts;
      for (const auto& b : budgets) {
        const i64 k = b.share_of(n, in.n_c);
        if (k < s.n_protected)
          fail(spec_, "budget " + b.text,
               "keeps " + std::to_string(k) + " tokens of the chunk [" + std::to_string(c0) + ", " + std::to_string(c1) +
                   "), fewer than its " + std::to_string(s.n_protected) + " protected tokens");
        counts.push_back({std::vector<i64>(s.units, std::min(k, n)), static_cast<double>(std::min(k, n)), 0});
      }
      const std::vector<Selection> local = base_->select_counts(in, s, counts);
      for (std::size_t b = 0; b < budgets.size(); ++b)
        for (int u = 0; u < s.units; ++u) std::copy_n(local[b].unit_mask(u), n, out[b].unit_mask(u) + c0);
    }
    return out;
  }

 private:
  std::string spec_;
  std::unique_ptr<ScoredRule> base_;
  i64 len_;
};

class ChunkKVRule : public Rule {
 public:
  ChunkKVRule(std::string spec, std::unique_ptr<ScoredRule> base, i64 len)
      : spec_(std::move(spec)), base_(std::move(base)), len_(len) {}
  std::string spec() const override { return spec_; }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    const UnitScores s = base_->scores(in);
    std::vector<std::vector<float>> mass(s.units);  // chunk means add masses, not log-masses
    for (int u = 0; u < s.units; ++u) mass[u] = s.linear_scores(u);
    const i64 n_chunks = (s.n_c + len_ - 1) / len_;
    std::vector<float> chunk_score(n_chunks, 0.0f);
    std::vector<std::uint8_t> forced(n_chunks, 0);
    i64 n_forced = 0;
    for (i64 c = 0; c < n_chunks; ++c) {
      const i64 c0 = c * len_, c1 = std::min(s.n_c, c0 + len_);
      double acc = 0;
      i64 cnt = 0;
      for (i64 j = c0; j < c1; ++j) {
        if (s.protect[j]) {
          forced[c] = 1;
          continue;
        }
        for (int u = 0; u < s.units; ++u) acc += mass[u][j];
        ++cnt;
      }
      n_forced += forced[c];
      chunk_score[c] = cnt > 0 ? static_cast<float>(acc / static_cast<double>(cnt)) : 0.0f;
    }
    std::vector<Selection> out;
    for (const auto& b : budgets) {
      const i64 want = b.share_of(n_chunks, in.n_c);
      const i64 extra = std::max<i64>(0, std::min(want, n_chunks) - n_forced);
      std::vector<std::uint8_t> keep = forced;
      for (i64 c : rank_unprotected(chunk_score.data(), forced.data(), n_chunks, extra)) keep[c] = 1;
      Selection sel(s.mode, s.units, s.n_c);
      for (int u = 0; u < s.units; ++u)
        for (i64 j = 0; j < s.n_c; ++j) sel.unit_mask(u)[j] = keep[j / len_];
      out.push_back(std::move(sel));
    }
    return out;
  }

 private:
  std::string spec_;
  std::unique_ptr<ScoredRule> base_;
  i64 len_;
};

std::unique_ptr<ScoredRule> plain_base(SpecReader& r, const char* who) {
  auto base = require_scored(r.get_rule_or(0, "snapkv"), who);
  if (!base->plain())
    r.error("base rule '" + base->spec() + "' must be a plain scorer (snapkv, knorm, random, ...), not a budget wrapper");
  return base;
}

KVSIM_RULE((RuleInfo{"chunk",
                     "ChunkPress: run the base scorer on each chunk alone and keep the same fraction of every chunk",
                     {{"base", "rule", "snapkv", "plain scorer (positional argument)"},
                      {"len", "int", "1024", "chunk length in tokens (last chunk may be shorter)"}},
                     /*in_all=*/false}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = plain_base(r, "chunk");
             const i64 len = r.get_int("len", 1024, 1, 1ll << 40);
             return std::make_unique<ChunkRule>(r.canonical(), std::move(base), len);
           });

KVSIM_RULE((RuleInfo{"chunkkv",
                     "ChunkKV: keep whole chunks ranked by mean base score summed over heads; same chunks for all heads. "
                     "Keeps floor(n_chunks * B / n_c) whole chunks, and always the chunks holding protected tokens, so the "
                     "kept count can fall short of the budget or exceed it (when the forced chunks alone do): kept_tokens "
                     "in metrics.csv is the count really kept",
                     {{"base", "rule", "snapkv", "plain scorer (positional argument)"},
                      {"len", "int", "20", "chunk length in tokens (partial last chunk counts as a chunk)"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = plain_base(r, "chunkkv");
             const i64 len = r.get_int("len", 20, 1, 1ll << 40);
             return std::make_unique<ChunkKVRule>(r.canonical(), std::move(base), len);
           });

}  // namespace
}  // namespace kvsim
