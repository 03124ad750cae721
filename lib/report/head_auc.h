#pragma once
// Budget-free per head (rules doc 1.4, summary.json#auc per rule): for every (rule, layer, head)
// head row of metrics.csv, rel_pert_l1's mean over the rule's kept-fraction range (trapezoids
// between its budgets, the area divided by the range), and per rule the distribution of that
// number over heads, so a ranking need not hinge on one budget or hide fragile heads. Computed
// from metrics.csv only (eval = out.eval); the tests recompute it.
#include <string>
#include <vector>

#include "report/replay_outputs.h"

namespace kvsim::report {

struct HeadAuc {
  std::string rule;
  int layer = 0, head = 0;
  double from = 0, to = 0;  // kept fraction range
  double rel_pert_l1 = 0;   // mean over the range
};
// Heads with at least two distinct kept fractions; n_c from summary.json's protocol.
std::vector<HeadAuc> head_aucs(const ReplayOutput& out);

struct HeadAucSummary {
  std::string rule;
  long long heads = 0;
  double median = 0, p90 = 0, max = 0;
  int worst_layer = 0, worst_head = 0;
};
// Per rule in out.rules order. Quantiles by linear interpolation between order statistics.
std::vector<HeadAucSummary> head_auc_summaries(const std::vector<HeadAuc>& aucs, const std::vector<std::string>& rules);

}  // namespace kvsim::report
