#include "report/output_tables.h"

#include "replay/metric_columns.h"
#include "prefill/prefill_output.h"
#include "report/analysis_files.h"
#include "report/closed_loop_columns.h"

namespace kvsim::report {

std::vector<const TableSchema*> output_tables() {
  return {&metrics_schema(), &per_query_schema(), &per_question_schema(), &summary_budget_schema(),
          &summary_auc_schema(),
          &sweep_metrics_schema(),
          &closed_loop_schema(), &offline_vs_closed_schema(),
          &key_stats_schema(), &key_recall_schema(), &prefill::prefill_metrics_schema(),
          &prefill::locality_schema(), &prefill::locality_shuffled_schema()};
}

}  // namespace kvsim::report
