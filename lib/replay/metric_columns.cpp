#include "replay/metric_columns.h"

#include <deque>
#include <string>

#include "core/error.h"

namespace kvsim {

namespace {

// The columns every metrics row starts with (metric_rows.cpp writes them in this order).
const std::vector<Column> kKeyColumns = {
    {"rule", ColumnType::text, "", "canonical spec of the rule (every parameter spelled out, see kvsim rules)"},
    {"label", ColumnType::text, "",
     "short label of the rule: its spec without the parameters at their catalogue defaults (unique within the run)"},
    {"budget", ColumnType::text, "", "the budget as written (0.2, 20%, cr=0.8, 512)"},
    {"budget_tokens", ColumnType::integer, "tokens",
     "kept tokens per head the budget means for this trace's compressible span n_c (the rule's own layer "
     "budget where it has one: pyramid)"},
    {"kept_tokens", ColumnType::real, "tokens",
     "tokens the rule really kept (per head; the mean over heads on the layer row). Above budget_tokens "
     "only where kvsim rules says so (chunkkv keeps whole chunks)"},
    {"cache_bytes", ColumnType::real, "bytes",
     "bytes of the kept span [0, n_c) of the head's selection unit: 4 head_dim per kept token (float16 keys and "
     "values), or what quant(...) stores (codes, scales, zero points, full-precision rows); layer row: mean over "
     "heads"},
    {"cache_ratio", ColumnType::real, "",
     "cache_bytes over the float16 full span n_c x 4 head_dim (an eviction rule's kept fraction; rules doc 2.33)"},
    {"layer", ColumnType::integer, "", "layer index"},
    {"head", ColumnType::integer, "",
     "query head; -1: the whole layer (in kv mode a head row reports its KV head's set)"},
    {"eval", ColumnType::text, "",
     "queries (the evaluation queries after the compression point) or window (the observation window)"},
};

TableSchema metric_table(std::string_view file, std::string_view content, Column count, bool per_query) {
  TableSchema s{file, content, kKeyColumns};
  s.columns.push_back(count);
  for (const MetricColumn& m : kMetricColumns)
    if (!per_query || m.per_query) s.columns.push_back(m.column);
  return s;
}

}  // namespace

const MetricColumn& metric_column(std::string_view name) {
  for (const MetricColumn& m : kMetricColumns)
    if (m.column.name == name) return m;
  fail("metrics.csv", std::string(name), "no such metric column");
}

const TableSchema& metrics_schema() {
  static const TableSchema s = metric_table(
      "metrics.csv", "one (rule, budget, layer, head, eval set), aggregated over the evaluation queries",
      {"n_queries", ColumnType::integer, "", "evaluation queries aggregated in the row"}, false);
  return s;
}

const TableSchema& per_query_schema() {
  static const TableSchema s = metric_table(
      "metrics_per_query.csv", "one (rule, budget, layer, head, eval set, query): the query's values",
      {"query_pos", ColumnType::integer, "", "the query's token position"}, true);
  return s;
}

const TableSchema& per_question_schema() {
  static const TableSchema s = [] {
    TableSchema t = metric_table(
        "metrics_per_question.csv",
        "one (rule, budget, layer, question) of a trace with several questions (/spans/question_K, kvsim-dump "
        "--questions): the layer row's values averaged over the question's evaluation queries (its tokens and its "
        "answer's)",
        {"question", ColumnType::integer, "", "K of /spans/question_K and /spans/answer_K"}, true);
    // after `question`: how many queries its values average
    t.columns.insert(t.columns.begin() + static_cast<std::ptrdiff_t>(kKeyColumns.size()) + 1,
                     {"n_queries", ColumnType::integer, "", "evaluation queries of the question"});
    return t;
  }();
  return s;
}

const TableSchema& sweep_metrics_schema() {
  static const TableSchema s = [] {
    TableSchema t = metrics_schema();
    t.file = "sweep_metrics.csv";
    t.content = "a metrics.csv row of one trace of the sweep";
    t.columns.insert(t.columns.begin(), {"trace", ColumnType::text, "", "the trace's label (its folder in the sweep)"});
    return t;
  }();
  return s;
}

namespace {

// One column per metric that summary.json aggregates (MetricColumn::summary), meaning
// "<what> <how>"; the generated texts live as long as the program (schemas hold views).
void add_summary_metric_columns(TableSchema& t, bool by_summary_name, const char* how) {
  static std::deque<std::string> meanings;
  for (const MetricColumn& m : kMetricColumns)
    if (!m.summary.empty()) {
      meanings.push_back(std::string(by_summary_name ? m.summary : m.column.name) + how);
      t.columns.push_back({m.summary, ColumnType::real, m.column.unit, meanings.back()});
    }
}

}  // namespace

const TableSchema& summary_budget_schema() {
  static const TableSchema s = [] {
    TableSchema t{"summary.json", "rules[].budgets[]: one budget of one rule, means over the replayed layers "
                                  "of the layer rows (head = -1) of the summary query set", {}};
    t.columns.push_back({"budget", ColumnType::text, "", "the budget as written"});
    t.columns.push_back({"budget_tokens_mean", ColumnType::real, "tokens", "budget_tokens, mean over layers"});
    t.columns.push_back({"kept_tokens_mean", ColumnType::real, "tokens", "kept_tokens, mean over layers"});
    t.columns.push_back({"cache_ratio_mean", ColumnType::real, "", "cache_ratio, mean over layers"});
    add_summary_metric_columns(t, false, ", mean over layers");
    t.columns.push_back({"select_seconds", ColumnType::real, "s",
                         "this budget's share of the rule's selection wall time"});
    t.columns.push_back({"tied_at_cut_mean", ColumnType::real, "tokens",
                         "rules that rank by scores: tokens tied with the cut per unit, mean (absent otherwise)"});
    t.columns.push_back({"tied_at_cut_max", ColumnType::integer, "tokens", "the same, maximum over units"});
    t.columns.push_back({"question_pert_l1", ColumnType::real, "output units",
                         "multi-question traces (/spans/question_K): a list, per question K, of its pert_l1, mean "
                         "over layers (absent otherwise)"});
    t.columns.push_back({"question_pert_l1_worst", ColumnType::real, "output units",
                         "the largest of question_pert_l1: what the rule's one compressed cache costs its worst-served "
                         "question"});
    t.columns.push_back({"question_pert_l1_spread", ColumnType::real, "",
                         "question_pert_l1_worst over the smallest: 1 when the cache serves every question alike"});
    t.columns.push_back({"decode_cache_tokens_mean", ColumnType::real, "tokens",
                         "--protocol decode: tokens an evaluation query's cache held per unit, mean over queries, "
                         "units and layers (absent otherwise)"});
    t.columns.push_back({"decode_compressions", ColumnType::integer, "",
                         "--protocol decode: compressions after n_c, summed over layers (absent otherwise)"});
    return t;
  }();
  return s;
}

const TableSchema& summary_auc_schema() {
  static const TableSchema s = [] {
    // Its own name: tables are keyed by file, and rules[].budgets[] holds "summary.json".
    TableSchema t{"summary.json#auc",
                  "rules[].auc: a budget-free summary of one rule, the area under each metric's curve over the kept "
                  "fraction (trapezoids between the rule's budgets, kept_tokens_mean / n_c), divided by the "
                  "fraction range: the metric's mean over [from, to]; absent with fewer than two distinct fractions",
                  {}};
    t.columns.push_back({"from", ColumnType::real, "fraction", "smallest kept fraction of the rule's budgets"});
    t.columns.push_back({"to", ColumnType::real, "fraction", "largest kept fraction"});
    t.columns.push_back({"points", ColumnType::integer, "", "distinct kept fractions on the curve"});
    add_summary_metric_columns(t, true, " averaged over the kept-fraction range");
    return t;
  }();
  return s;
}

}  // namespace kvsim
