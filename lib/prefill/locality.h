#pragma once
// Locality of query criticality (selection-rules.md 4.4 a): J(delta) = mean Jaccard similarity
// of the top-K key-block sets of query i and query i + delta, delta = 1 .. 2S, with the block
// masses of both queries restricted to the blocks visible to both (blocks entirely at or before
// i). Sampled: `anchors` queries i evenly spaced over [(K+1)*bs - 1, n - 2] (so that more than
// K blocks compete), every delta with i + delta < n used for each anchor.
#include <vector>

#include "prefill/heads_view.h"
#include "prefill/segment_plan.h"

namespace kvsim::prefill {

struct LocalityCurve {
  int head = -1;
  std::vector<double> jaccard;  // [2S], index delta - 1; NaN where no pair was available
  std::vector<i64> pairs;       // pairs averaged per delta
};

// The anchors used for a prompt of n tokens (empty when the prompt is too short).
std::vector<i64> locality_anchors(const SegmentPlan& plan, int anchors);

// One curve per query head (OpenMP over heads x anchors).
std::vector<LocalityCurve> locality_curves(const HeadsView& x, const SegmentPlan& plan, int anchors);

// |a intersect b| / |a union b| of two index sets (any order, no duplicates).
double jaccard(std::vector<i64> a, std::vector<i64> b);

}  // namespace kvsim::prefill
