#include "report/memory_pareto.h"

#include <cmath>
#include <map>
#include <set>

namespace kvsim::report {

std::string memory_kind(const std::string& rule) {
  if (rule.rfind("quant(", 0) != 0) return "eviction";
  return rule.rfind("quant(full,", 0) == 0 || rule == "quant(full)" ? "quantization" : "both";
}

bool has_quantization(const ReplayOutput& out) {
  for (const auto& r : out.rules)
    if (memory_kind(r) != "eviction") return true;
  return false;
}

std::vector<MemoryPoint> memory_points(const ReplayOutput& out, int layer) {
  // Layers every (rule, budget) has, so means compare the same layers.
  std::map<std::pair<std::string, std::string>, std::map<int, const MetricRow*>> rows;
  for (const auto& r : out.rows)
    if (r.head == -1 && r.eval == out.eval && (layer < 0 || r.layer == layer)) rows[{r.rule, r.budget}][r.layer] = &r;
  std::set<int> common(out.layers.begin(), out.layers.end());
  if (layer >= 0) common = {layer};
  for (const auto& [key, by_layer] : rows)
    for (auto it = common.begin(); it != common.end();) it = by_layer.count(*it) ? std::next(it) : common.erase(it);
  std::vector<MemoryPoint> out_points;
  if (common.empty()) return out_points;
  for (const auto& rule : out.rules)
    for (const auto& budget : out.budgets) {
      const auto found = rows.find({rule, budget});
      if (found == rows.end()) continue;
      MemoryPoint p{rule, budget, memory_kind(rule)};
      for (int l : common) {
        const MetricRow& r = *found->second.at(l);
        p.cache_ratio += r.cache_ratio / static_cast<double>(common.size());
        p.pert_l1 += r.pert_l1 / static_cast<double>(common.size());
        p.pert_l2 += r.pert_l2 / static_cast<double>(common.size());
      }
      out_points.push_back(p);
    }
  mark_pareto_front(out_points);
  return out_points;
}

void mark_pareto_front(std::vector<MemoryPoint>& points) {
  for (auto& p : points) {
    p.front = std::isfinite(p.cache_ratio) && std::isfinite(p.pert_l2);
    for (const auto& q : points)
      if (&q != &p && q.cache_ratio <= p.cache_ratio && q.pert_l2 <= p.pert_l2 &&
          (q.cache_ratio < p.cache_ratio || q.pert_l2 < p.pert_l2)) {
        p.front = false;
        break;
      }
  }
}

}  // namespace kvsim::report
