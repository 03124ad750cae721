#pragma once
// The replay's output columns, declared once (docs/outputs.md is generated from them): the key
// columns every row starts with, and the metric columns with the per-query series they reduce.
// metrics.csv, metrics_per_query.csv, sweep_metrics.csv, summary.json's per-budget means, kvsim
// sweep's unit records and the Python API's DataFrames all take their columns from here, so a new
// metric column is one line in kMetricColumns plus its computation in PerturbationResult.
#include <array>
#include <string_view>
#include <vector>

#include "attention/perturbation.h"
#include "core/columns.h"

namespace kvsim {

// What a metrics.csv row does with a query series: its mean, min or max over the evaluation queries.
enum class Reduce { mean, min, max };

struct MetricColumn {
  Column column;
  const std::vector<double> PerturbationResult::*head;   // per head and query (index h * n_q + qi)
  const std::vector<double> PerturbationResult::*layer;  // per query, the whole layer (head = -1)
  Reduce reduce;
  bool per_query;            // also a metrics_per_query.csv column (the query's value)
  std::string_view summary;  // summary.json key of its mean over layers ("" when not there)
};

using PR = PerturbationResult;
inline constexpr std::array kMetricColumns = {
    MetricColumn{{"retained_mass", ColumnType::real, "",
                  "attention mass of the kept set (mean over queries; layer row: mean over heads)"},
                 &PR::F, &PR::layer_F_mean, Reduce::mean, true, "retained_mass_mean"},
    MetricColumn{{"retained_mass_min", ColumnType::real, "",
                  "the smallest retained mass over queries (layer row: over queries and heads)"},
                 &PR::F, &PR::layer_F_min, Reduce::min, false, ""},
    MetricColumn{{"pert_l1", ColumnType::real, "output units",
                  "exact ‖o_full − o_kept‖₁, through o_proj when the trace stores it (the layer output "
                  "space), else on the head output; mean over queries"},
                 &PR::l1, &PR::layer_l1, Reduce::mean, true, "pert_l1_mean"},
    MetricColumn{{"pert_l1_max", ColumnType::real, "output units", "pert_l1's maximum over queries"},
                 &PR::l1, &PR::layer_l1, Reduce::max, false, ""},
    MetricColumn{{"pert_l2", ColumnType::real, "output units", "the same in the L2 norm, mean over queries"},
                 &PR::l2, &PR::layer_l2, Reduce::mean, true, "pert_l2_mean"},
    MetricColumn{{"pert_l2_max", ColumnType::real, "output units", "pert_l2's maximum over queries"},
                 &PR::l2, &PR::layer_l2, Reduce::max, false, ""},
    MetricColumn{{"rel_pert_l1", ColumnType::real, "",
                  "pert_l1 divided by the L1 norm of the full-attention output, mean over queries"},
                 &PR::rel_l1, &PR::layer_rel_l1, Reduce::mean, true, "rel_pert_l1_mean"},
    MetricColumn{{"rel_pert_l2", ColumnType::real, "",
                  "pert_l2 divided by the L2 norm of the full-attention output, mean over queries"},
                 &PR::rel_l2, &PR::layer_rel_l2, Reduce::mean, true, ""},
    MetricColumn{{"bound_ada", ColumnType::real, "output units",
                  "Ada-KV's eviction-loss bound 2 (1 − F) max_j ν_j (ν_j = ‖v_j W_o‖ in the norm --nu chose); "
                  "layer row: 2 C Σ_h (1 − F_h), C the largest ν of the layer"},
                 &PR::bound_ada, &PR::layer_ada, Reduce::mean, true, "bound_ada_mean"},
    MetricColumn{{"bound_critical", ColumnType::real, "output units",
                  "CriticalKV's worst-case bound θ = Σ_j a_j ν_j − (2 − 1/F) Σ_kept a_j ν_j; layer row: Σ_h θ_h"},
                 &PR::theta, &PR::layer_theta, Reduce::mean, true, "bound_critical_mean"},
};
inline constexpr std::size_t kNumMetrics = kMetricColumns.size();

// Index of a metric column by name, checked when compiling: metric_index("pert_l1").
consteval std::size_t metric_index(std::string_view name) {
  for (std::size_t i = 0; i < kMetricColumns.size(); ++i)
    if (kMetricColumns[i].column.name == name) return i;
  throw "no such metric column";
}

// The same at run time; throws kvsim::Error for a name that is not declared.
const MetricColumn& metric_column(std::string_view name);

const TableSchema& metrics_schema();        // metrics.csv
const TableSchema& per_query_schema();      // metrics_per_query.csv
const TableSchema& per_question_schema();   // metrics_per_question.csv (multi-question traces)
const TableSchema& sweep_metrics_schema();  // sweep_metrics.csv: trace + metrics.csv
const TableSchema& summary_budget_schema(); // summary.json rules[].budgets[] fields
const TableSchema& summary_auc_schema();    // summary.json rules[].auc fields

}  // namespace kvsim
