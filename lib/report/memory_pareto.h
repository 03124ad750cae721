#pragma once
// Memory against perturbation (rules doc 2.33): every (rule, budget) of a replay as a point
// (mean cache_ratio, mean layer pert_l2) over the layers, or on one layer, and the Pareto front
// (no other point is at most as large in both and smaller in one). From metrics.csv layer rows
// (eval = out.eval), so tests recompute it from the CSV.
#include <string>
#include <vector>

#include "report/replay_outputs.h"

namespace kvsim::report {

struct MemoryPoint {
  std::string rule, budget;
  std::string kind;  // "eviction", "quantization" (quant(full, ...)) or "both" (quant over an eviction rule)
  double cache_ratio = 0, pert_l1 = 0, pert_l2 = 0;
  bool front = false;
};

// The kind of a rule spec, as above.
std::string memory_kind(const std::string& rule);
// Points in out.rules x out.budgets order; layer -1: means over the layers every point has.
std::vector<MemoryPoint> memory_points(const ReplayOutput& out, int layer = -1);
// Sets front on the non-dominated points (by cache_ratio and pert_l2).
void mark_pareto_front(std::vector<MemoryPoint>& points);
// Whether the output holds a quant(...) rule (the report's memory section appears then).
bool has_quantization(const ReplayOutput& out);

}  // namespace kvsim::report
