#pragma once
// metrics.csv / metrics_per_query.csv rows (columns: replay/metric_columns.h) from the
// per-query PerturbationResult of one (rule, budget, layer, eval set), to any RowSink.
#include <array>
#include <map>
#include <string>
#include <vector>

#include "attention/perturbation.h"
#include "core/columns.h"
#include "core/selection.h"
#include "replay/metric_columns.h"

namespace kvsim {

struct RowKey {
  std::string rule, label, budget;
  i64 budget_tokens = 0;
  int layer = 0;
  std::string eval;  // "queries" | "window"
  int head_dim = 0;  // for cache_bytes / cache_ratio
};

// The layer row's values (head = -1) that summary.json and the stdout table use.
struct LayerAggregate {
  double kept_tokens = 0, cache_ratio = 0;
  std::array<double, kNumMetrics> values{};  // kMetricColumns order
  double operator[](std::size_t metric) const { return values[metric]; }
};

// Appends the head rows of `heads` and the layer row (head = -1); returns the layer row.
LayerAggregate write_metric_rows(RowSink& out, const RowKey& key, const Selection& sel, const PerturbationResult& r,
                                 const std::vector<int>& heads, int group_size);
// One question of a multi-question trace: its evaluation queries are the positions [begin, end).
struct QuestionSpan {
  int k = 0;
  i64 begin = 0, end = 0;
};
// The questions of a trace's /spans/question_K (each to the end of /spans/answer_K when present),
// by K; empty when it has none.
std::vector<QuestionSpan> trace_questions(const std::map<std::string, std::pair<i64, i64>>& spans);

// Appends one layer row (head = -1) per question with evaluation queries; returns each
// question's layer pert_l1 (NaN for a question without queries), in `questions` order.
std::vector<double> write_per_question_rows(RowSink& out, const RowKey& key, const Selection& sel,
                                            const PerturbationResult& r, const std::vector<i64>& positions,
                                            const std::vector<QuestionSpan>& questions, int group_size);

void write_per_query_rows(RowSink& out, const RowKey& key, const Selection& sel, const PerturbationResult& r,
                          const std::vector<i64>& positions, const std::vector<int>& heads, int group_size);

}  // namespace kvsim
