#include "prefill/segment_plan.h"

#include <algorithm>

#include "core/error.h"

namespace kvsim::prefill {

SegmentPlan::SegmentPlan(i64 n, const PrefillConfig& cfg) : n_(n), cfg_(cfg) {
  cfg_.validate();
  if (n < 1) fail("prefill", "n", "needs at least one prompt token");
  const i64 S = cfg_.segment, bs = cfg_.block, K = cfg_.top_k();
  const i64 count = (n + S - 1) / S;
  segs_.resize(static_cast<std::size_t>(count));
  for (i64 s = 0; s < count; ++s) {
    SegmentInfo& g = segs_[static_cast<std::size_t>(s)];
    g.start = s * S;
    g.end = std::min(n, g.start + S);
    g.dense = g.start < cfg_.threshold || s == count - 1;
    g.eligible_blocks = g.start / bs;
    g.kept_blocks = g.dense ? g.eligible_blocks : std::min(K, g.eligible_blocks);
  }
}

i64 SegmentPlan::num_dense_segments() const {
  return std::count_if(segs_.begin(), segs_.end(), [](const SegmentInfo& g) { return g.dense; });
}

i64 SegmentPlan::num_sparse_queries() const {
  i64 q = 0;
  for (const auto& g : segs_)
    if (!g.dense) q += g.len();
  return q;
}

double SegmentPlan::dense_pairs() const { return 0.5 * static_cast<double>(n_) * static_cast<double>(n_ + 1); }

double SegmentPlan::sparse_pairs() const {
  double pairs = 0;
  for (const auto& g : segs_) {
    const double len = static_cast<double>(g.len());
    // Past keys for every query plus the causal triangle of the own segment.
    pairs += len * static_cast<double>(g.kept_blocks * cfg_.block) + 0.5 * len * (len + 1);
  }
  return pairs;
}

double SegmentPlan::sparse_part_reduction() const {
  double visible = 0, kept = 0;
  for (const auto& g : segs_) {
    if (g.dense) continue;
    visible += static_cast<double>(g.end);
    kept += static_cast<double>(g.kept_blocks * cfg_.block + g.len());
  }
  return kept > 0 ? visible / kept : 1.0;
}

double SegmentPlan::estimation_macs(int head_dim) const {
  double macs = 0;
  for (const auto& g : segs_)
    if (!g.dense) macs += 2.0 * static_cast<double>(g.eligible_blocks) * head_dim;
  return macs;
}

}  // namespace kvsim::prefill
