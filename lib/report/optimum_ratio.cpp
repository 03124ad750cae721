#include "report/optimum_ratio.h"

#include <algorithm>
#include <map>

#include "report/order_stats.h"

namespace kvsim::report {

std::vector<OptimumRatio> optimum_ratios(const ReplayOutput& out) {
  std::vector<OptimumRatio> rows;
  const auto ref = std::find_if(out.rules.begin(), out.rules.end(),
                                [](const std::string& r) { return r.rfind("oracle_greedy(", 0) == 0; });
  if (ref == out.rules.end()) return rows;
  // (rule, budget) -> layer -> row
  std::map<std::pair<std::string, std::string>, std::map<int, const MetricRow*>> layer_rows;
  for (const auto& r : out.rows)
    if (r.head == -1 && r.eval == out.eval) layer_rows[{r.rule, r.budget}][r.layer] = &r;
  for (const auto& budget : out.budgets) {
    const auto rit = layer_rows.find({*ref, budget});
    if (rit == layer_rows.end()) continue;
    for (const auto& rule : out.rules) {
      const auto it = layer_rows.find({rule, budget});
      if (it == layer_rows.end()) continue;
      OptimumRatio x;
      x.rule = rule;
      x.budget = budget;
      x.reference = *ref;
      double ref_l1 = 0, ref_l2 = 0;
      std::vector<double> per_layer;
      for (const auto& [layer, row] : it->second) {
        const auto o = rit->second.find(layer);
        if (o == rit->second.end()) continue;
        ++x.n_layers;
        x.pert_l1 += row->pert_l1;
        x.pert_l2 += row->pert_l2;
        ref_l1 += o->second->pert_l1;
        ref_l2 += o->second->pert_l2;
        per_layer.push_back(row->pert_l2 / o->second->pert_l2);
        x.layers_below += row->pert_l2 < o->second->pert_l2;
      }
      if (x.n_layers == 0) continue;
      x.ratio_l1 = x.pert_l1 / ref_l1;
      x.ratio_l2 = x.pert_l2 / ref_l2;
      x.pert_l1 /= x.n_layers;
      x.pert_l2 /= x.n_layers;
      x.median_layer_ratio_l2 = median(per_layer);
      rows.push_back(x);
    }
  }
  return rows;
}

}  // namespace kvsim::report
