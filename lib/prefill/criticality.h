#pragma once
// CritiPrefill's segment-wise criticality estimation (selection-rules.md 2.16): segment query
// extremes against block key extremes, group mean per KV head, causal mask, softmax over
// blocks; optional layer fusion; top-K block selection per segment.
#include "prefill/block_selection.h"
#include "prefill/heads_view.h"
#include "prefill/segment_plan.h"

namespace kvsim::prefill {

// Block probabilities per (KV head, profiled segment): row (g, s) holds the softmax over the
// blocks b < s*r (zero elsewhere; all zero for s = 0, which has no eligible block).
struct CriticalityMap {
  int num_kv_heads = 0;
  i64 num_segments = 0;  // profiled segments
  i64 num_blocks = 0;    // num_segments * r: every block any profiled segment may pick
  avec<float> p;         // [num_kv_heads][num_segments][num_blocks]

  CriticalityMap() = default;
  CriticalityMap(int kv_heads, i64 segments, i64 blocks);
  float* row(int g, i64 s) { return p.data() + (g * num_segments + s) * num_blocks; }
  const float* row(int g, i64 s) const { return p.data() + (g * num_segments + s) * num_blocks; }
};

// Raw scores before the group mean, exposed for the tests: C_h(s, b) for query head h over
// the profiled segments and their blocks, [num_profiled][num_profiled * r], no masking.
avec<float> head_criticality(const HeadsView& x, const SegmentPlan& plan, int h);

// The full estimate of one layer (OpenMP over KV heads).
CriticalityMap estimate_criticality(const HeadsView& x, const SegmentPlan& plan);

// fused = 0.25 * previous + 0.75 * current, element-wise (shapes must match).
CriticalityMap fuse_maps(const CriticalityMap& previous, const CriticalityMap& current);

// Carries the fused map from layer to layer: layers <= 1 store their own map; a deeper layer
// whose predecessor stored a map uses and stores 0.25 * stored + 0.75 * current. Dense layers
// (index < layer_skip) never run the estimator, so they store nothing, as in the reference.
class LayerFusion {
 public:
  // The map layer `layer` selects with; call in increasing layer order.
  CriticalityMap apply(int layer, const CriticalityMap& current);
  void reset() { have_ = false; }

 private:
  bool have_ = false;
  int stored_layer_ = -1;
  CriticalityMap stored_;
};

// Top-K blocks per sparse segment and KV head (ties: lower block index); dense segments get
// every block before their start. Dense layers (index < layer_skip) use BlockSelection::dense.
BlockSelection select_blocks(const SegmentPlan& plan, const CriticalityMap& map);

}  // namespace kvsim::prefill
