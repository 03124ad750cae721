#pragma once
// Each rule's layer perturbation as a ratio to oracle_greedy's at the same budget (rules doc
// 2.19): "how far from the best achievable at this budget". Computed from metrics.csv layer rows
// only (eval = out.eval), so tests recompute it from the CSV.
#include <string>
#include <vector>

#include "report/replay_outputs.h"

namespace kvsim::report {

struct OptimumRatio {
  std::string rule, budget, reference;  // reference: the oracle_greedy spec divided by
  int n_layers = 0;                     // layers both rules have
  double pert_l1 = 0, pert_l2 = 0;      // the rule's means over those layers
  double ratio_l1 = 0, ratio_l2 = 0;    // mean / the reference's mean over the same layers
  double median_layer_ratio_l2 = 0;     // median over layers of the per-layer pert_l2 ratio
  int layers_below = 0;                 // layers where the rule's pert_l2 is below the reference's
};

// The reference is the first rule of out.rules whose spec is oracle_greedy(...); empty result
// when the output has none. Rows per budget in out.budgets order, rules in out.rules order
// (the reference included, ratio 1).
std::vector<OptimumRatio> optimum_ratios(const ReplayOutput& out);

}  // namespace kvsim::report
