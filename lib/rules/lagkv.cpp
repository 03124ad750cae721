// lagkv: LagKV (Liang et al. 2025, arXiv 2504.04704; kvpress LagKVPress), rules doc 2.20. After
// `sink` tokens the span is cut into partitions of `lag` tokens; partition i is scored against
// partition i + 1 (its lag reference): each channel is min-max normalised by the reference's
// range, a token's spread is the standard deviation of its normalised channels (unbiased), and
// a softmax over the partition turns spreads into scores, for keys and values alike; the score is
// their mean, then its rank inside the partition / lag (cross=false, kvpress's default) or the
// mean itself (cross=true). The sinks and the last partition with the remainder (which has no
// reference) score 1, above every rank, as in kvpress: they go first, and a budget smaller than
// them keeps the lower positions among them (kvpress's topk order at that tie is unspecified).
// Spans shorter than sink + 2 lag are not scored: then the sinks score 1 and the rest rank by
// recency, as kvpress's fallback does. Nothing is protected.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

// Softmax over one partition of the spreads of x's tokens against the reference ref (lag rows).
void spread_softmax(const float* x, const float* ref, i64 lag, int dim, float* out) {
  std::vector<float> lo(dim, INFINITY), hi(dim, -INFINITY);
  for (i64 j = 0; j < lag; ++j)
    for (int c = 0; c < dim; ++c) {
      lo[c] = std::min(lo[c], ref[j * dim + c]);
      hi[c] = std::max(hi[c], ref[j * dim + c]);
    }
  std::vector<float> norm(dim);
  float top = -INFINITY;
  for (i64 j = 0; j < lag; ++j) {
    double mean = 0;
    for (int c = 0; c < dim; ++c) mean += norm[c] = (x[j * dim + c] - lo[c]) / (hi[c] - lo[c]);
    mean /= dim;
    double var = 0;
    for (int c = 0; c < dim; ++c) var += (norm[c] - mean) * (norm[c] - mean);
    out[j] = static_cast<float>(std::sqrt(var / (dim - 1)));
    top = std::max(top, out[j]);
  }
  float z = 0;
  for (i64 j = 0; j < lag; ++j) z += out[j] = std::exp(out[j] - top);
  for (i64 j = 0; j < lag; ++j) out[j] /= z;
}

class LagKvRule : public ScoredRule {
 public:
  LagKvRule(std::string spec, i64 sink, i64 lag, bool cross)
      : ScoredRule(std::move(spec)), sink_(sink), lag_(lag), cross_(cross) {}
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    const LayerData& d = *in.data;
    const i64 n = end - begin;
    UnitScores s(GqaMode::kv, d.num_kv_heads, n);
    std::fill(s.score.begin(), s.score.end(), 1.0f);  // sinks and the unreferenced tail
    if (n < sink_ + 2 * lag_) {  // kvpress's fallback: the most recent tokens rank first
      for (int g = 0; g < d.num_kv_heads; ++g)
        for (i64 j = sink_; j < n; ++j)
          s.unit(g)[j] = static_cast<float>(j - sink_) / static_cast<float>(n - sink_);
      return s;
    }
    const i64 end_idx = sink_ + (n - sink_) / lag_ * lag_;
    const i64 parts = (end_idx - sink_) / lag_ - 1;  // partitions with a reference
    const int dim = d.head_dim;
#pragma omp parallel for schedule(dynamic) collapse(2)
    for (int g = 0; g < d.num_kv_heads; ++g)
      for (i64 p = 0; p < parts; ++p) {
        const i64 at = begin + sink_ + p * lag_;
        std::vector<float> ks(lag_), vs(lag_);
        spread_softmax(d.k_row(g, at), d.k_row(g, at + lag_), lag_, dim, ks.data());
        spread_softmax(d.v_row(g, at), d.v_row(g, at + lag_), lag_, dim, vs.data());
        float* out = s.unit(g) + sink_ + p * lag_;
        for (i64 j = 0; j < lag_; ++j) out[j] = (ks[j] + vs[j]) / 2;
        if (cross_) continue;
        // Rank inside the partition (0 = lowest), ties to the lower position (a stable sort).
        std::vector<i64> order(lag_);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return out[a] < out[b]; });
        for (i64 r = 0; r < lag_; ++r) out[order[r]] = static_cast<float>(r) / static_cast<float>(lag_);
      }
    return s;
  }

 private:
  i64 sink_, lag_;
  bool cross_;
};

KVSIM_RULE((RuleInfo{"lagkv",
                     "LagKV (kvpress LagKVPress): per partition of lag tokens, the softmax of each token's spread "
                     "of min-max normalised keys and values against the next partition; ranked within the partition",
                     {{"sink", "int >= 0", "4", "leading tokens kept"},
                      {"lag", "int >= 2", "128", "partition length (each partition's reference is the next one)"},
                      {"cross", "bool", "false", "rank by the scores themselves across partitions, not by rank"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             const i64 sink = r.get_int("sink", 4, 0, 1 << 30);
             const i64 lag = r.get_int("lag", 128, 2, 1 << 30);
             const bool cross = r.get_bool("cross", false);
             return std::make_unique<LagKvRule>(r.canonical(), sink, lag, cross);
           });

}  // namespace
}  // namespace kvsim
