#pragma once
// `kvsim prefill TRACE`: CritiPrefill simulated on every layer of a trace that stores the query
// of every prompt position. Streams one layer at a time: estimate, select (fusion on / off),
// exact metrics of the sparsified queries, locality curves.
#include <string>
#include <utility>
#include <vector>

#include "prefill/locality.h"
#include "prefill/prefill_metrics.h"
#include "prefill/segment_plan.h"
#include "trace/trace_meta.h"

namespace kvsim::prefill {

struct PrefillRunOptions {
  PrefillConfig cfg;
  bool fusion_on = true, fusion_off = false;  // which selections to simulate (--fusion on|off|both)
  int locality_anchors = 8;                    // per (layer, head); 0 disables locality
};

struct LayerLocality {
  int layer = -1;
  std::vector<LocalityCurve> heads;
};

struct PrefillRunResult {
  TraceMeta meta;
  SegmentPlan plan;
  bool projected = false;                 // metrics through o_proj (else on head outputs)
  std::vector<LayerMetrics> metrics;      // per layer, one per simulated fusion variant
  std::vector<LayerLocality> locality;
  std::vector<i64> anchors;
  double read_seconds = 0, estimate_seconds = 0, simulate_seconds = 0, locality_seconds = 0, total_seconds = 0;
};

// The prompt length n (prefill_len) after checking that /q_pos stores every position 0..n-1;
// throws "<path>: /q_pos: ..." naming the first missing position otherwise.
i64 checked_prompt_len(const TraceMeta& meta);

PrefillRunResult run_prefill_trace(const std::string& path, const PrefillRunOptions& opt);

}  // namespace kvsim::prefill
