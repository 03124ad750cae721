#pragma once
// Locality of query criticality (selection-rules.md 4.4 a): J(delta) = mean Jaccard similarity
// of the top-K key-block sets of query i and query i + delta, delta = 1 .. 2S, with the block
// masses of both queries restricted to the blocks visible to both (blocks entirely at or before
// i). Sampled: `anchors` queries i evenly spaced over [(K+1)*bs - 1, n - 2] (so that more than
// K blocks compete), every delta with i + delta < n used for each anchor.
// The shuffled baseline (4.4 a): the same Jaccard for kShuffledPartners random partners j of
// each anchor, drawn uniformly from the anchor range [(K+1)*bs - 1, n - 1] without i, with the
// masses restricted to the blocks visible to both (at or before min(i, j)). It is what J would
// be if criticality had no locality but the same position-dependent structure (attention
// sinks, recency), so J(1) above it is the locality CritiPrefill relies on.
#include <vector>

#include "prefill/heads_view.h"
#include "prefill/segment_plan.h"

namespace kvsim::prefill {

struct LocalityCurve {
  int head = -1;
  std::vector<double> jaccard;  // [2S], index delta - 1; NaN where no pair was available
  std::vector<i64> pairs;       // pairs averaged per delta
  double shuffled = 0;          // mean Jaccard over the random (anchor, partner) pairs; NaN if none
  i64 shuffled_pairs = 0;
};

constexpr int kShuffledPartners = 8;

// Partner `p` of anchor i for head h: a pure function of (n, i, h, p) through splitmix64.
i64 shuffled_partner(const SegmentPlan& plan, i64 i, int h, int p);

// The anchors used for a prompt of n tokens (empty when the prompt is too short).
std::vector<i64> locality_anchors(const SegmentPlan& plan, int anchors);

// One curve per query head (OpenMP over heads x anchors).
std::vector<LocalityCurve> locality_curves(const HeadsView& x, const SegmentPlan& plan, int anchors);

// |a intersect b| / |a union b| of two index sets (any order, no duplicates).
double jaccard(std::vector<i64> a, std::vector<i64> b);

}  // namespace kvsim::prefill
