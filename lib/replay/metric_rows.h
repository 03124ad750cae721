#pragma once
// metrics.csv / metrics_per_query.csv rows (exact columns: docs/outputs.md) from the
// per-query PerturbationResult of one (rule, budget, layer, eval set).
#include <ostream>
#include <string>
#include <vector>

#include "attention/perturbation.h"
#include "core/selection.h"

namespace kvsim {

struct RowKey {
  std::string rule, budget;
  i64 budget_tokens = 0;
  int layer = 0;
  std::string eval;  // "queries" | "window"
};

// Layer-row aggregates (means over queries) that summary.json and the stdout table use.
struct LayerAggregate {
  double kept_tokens = 0, retained_mass = 0, pert_l1 = 0, pert_l2 = 0, rel_pert_l1 = 0, bound_ada = 0,
         bound_critical = 0;
};

void write_metrics_header(std::ostream& out);
void write_per_query_header(std::ostream& out);

// Appends the head rows of `heads` and the layer row (head = -1); returns the layer aggregate.
LayerAggregate write_metric_rows(std::ostream& out, const RowKey& key, const Selection& sel,
                                 const PerturbationResult& r, const std::vector<int>& heads, int group_size);
void write_per_query_rows(std::ostream& out, const RowKey& key, const Selection& sel, const PerturbationResult& r,
                          const std::vector<i64>& positions, const std::vector<int>& heads, int group_size);

}  // namespace kvsim
