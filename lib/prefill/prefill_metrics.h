#pragma once
// Exact simulation of CritiPrefill on one layer of a trace: for every sparsified query (queries
// of sparse segments), attention restricted to the selected blocks plus the own segment prefix
// against full causal attention (selection-rules.md 1.3 metrics with P = selected blocks and
// own prefix), and block recall.
#include <limits>
#include <string>
#include <vector>

#include "prefill/block_selection.h"
#include "prefill/heads_view.h"

namespace kvsim::prefill {

// Running mean / min / max of the per-query metrics of one head or one layer.
struct MetricSums {
  i64 n = 0;
  double retained = 0, retained_min = std::numeric_limits<double>::infinity();
  double l1 = 0, l1_max = 0, l2 = 0, l2_max = 0, rel_l1 = 0, rel_l2 = 0, recall = 0;
  void add(double F, double pl1, double pl2, double rl1, double rl2, double rec);
  void merge(const MetricSums& o);
};

struct LayerMetrics {
  int layer = -1;
  std::string variant;        // "fusion_on" / "fusion_off" / "dense" (layer < layer_skip)
  bool dense_layer = false;
  std::vector<MetricSums> heads;  // per query head
  MetricSums layer_row;           // head = -1: per query, layer-output norms; F and recall averaged over heads
  double pair_reduction = 1.0;    // dense causal pairs / attended pairs of this layer
  double kept_keys_mean = 0;      // mean attended keys per sparsified query (past blocks + own prefix)
};

// Output projection of one layer: HF layout [hidden][num_heads * head_dim], or null (then the
// metrics are on head outputs and the layer output is their concatenation).
struct OutProj {
  const float* w = nullptr;
  int hidden = 0;
};

// One LayerMetrics per selection (all selections must share the plan). Full attention of each
// sparsified query is computed once and compared with every selection.
std::vector<LayerMetrics> simulate_layer(const HeadsView& x, const OutProj& wo,
                                         const std::vector<const BlockSelection*>& selections);

}  // namespace kvsim::prefill
