#include "report/replay_outputs.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "replay/metric_columns.h"
#include "report/csv_reader.h"

namespace kvsim::report {

namespace fs = std::filesystem;

std::vector<MetricRow> parse_metrics_csv(const std::string& path) {
  const CsvTable t = CsvTable::read(path);
  // Columns by their declared names (replay/metric_columns.h): a name the declaration lacks
  // throws here, not as a silently missing column.
  const auto column = [&](std::string_view name) { return declared_column(t, metrics_schema(), name); };
  const auto c_rule = column("rule"), c_budget = column("budget"), c_bt = column("budget_tokens"),
             c_kept = column("kept_tokens"), c_ratio = column("cache_ratio"), c_layer = column("layer"), c_head = column("head"),
             c_eval = column("eval"), c_nq = column("n_queries"), c_f = column("retained_mass"),
             c_fmin = column("retained_mass_min"), c_p1 = column("pert_l1"), c_p1m = column("pert_l1_max"),
             c_p2 = column("pert_l2"), c_p2m = column("pert_l2_max"), c_r1 = column("rel_pert_l1"),
             c_r2 = column("rel_pert_l2"), c_ba = column("bound_ada"), c_bc = column("bound_critical");
  std::vector<MetricRow> rows;
  rows.reserve(t.rows());
  for (std::size_t i = 0; i < t.rows(); ++i) {
    MetricRow r;
    r.rule = t.cell(i, c_rule);
    r.budget = t.cell(i, c_budget);
    r.eval = t.cell(i, c_eval);
    if (r.eval != "queries" && r.eval != "window")
      fail(path, "line " + std::to_string(i + 2) + ", column eval", "'" + r.eval + "' is not queries or window");
    r.budget_tokens = t.number(i, c_bt);
    r.kept_tokens = t.number(i, c_kept);
    r.cache_ratio = t.number(i, c_ratio);
    r.layer = static_cast<int>(t.integer(i, c_layer));
    r.head = static_cast<int>(t.integer(i, c_head));
    r.n_queries = t.integer(i, c_nq);
    r.retained_mass = t.number(i, c_f);
    r.retained_mass_min = t.number(i, c_fmin);
    r.pert_l1 = t.number(i, c_p1);
    r.pert_l1_max = t.number(i, c_p1m);
    r.pert_l2 = t.number(i, c_p2);
    r.pert_l2_max = t.number(i, c_p2m);
    r.rel_pert_l1 = t.number(i, c_r1);
    r.rel_pert_l2 = t.number(i, c_r2);
    r.bound_ada = t.number(i, c_ba);
    r.bound_critical = t.number(i, c_bc);
    if (r.layer < 0 || r.head < -1)
      fail(path, "line " + std::to_string(i + 2), "negative layer or head below -1");
    rows.push_back(std::move(r));
  }
  return rows;
}

bool is_replay_output(const std::string& dir) {
  return fs::is_regular_file(fs::path(dir) / "metrics.csv") && fs::is_regular_file(fs::path(dir) / "summary.json");
}

ReplayOutput load_replay_output(const std::string& dir) {
  if (!fs::is_directory(dir)) fail(dir, "", "not a folder (expected a kvsim replay --out folder)");
  ReplayOutput out;
  out.dir = dir;
  const std::string metrics = (fs::path(dir) / "metrics.csv").string();
  const std::string summary = (fs::path(dir) / "summary.json").string();
  if (!fs::exists(metrics)) fail(metrics, "", "missing (is this a kvsim replay --out folder?)");
  if (!fs::exists(summary)) fail(summary, "", "missing (is this a kvsim replay --out folder?)");
  out.summary = JsonValue::read_file(summary);
  if (!out.summary.is_object()) fail(summary, "", "top level is not a JSON object");
  out.rows = parse_metrics_csv(metrics);
  if (out.rows.empty()) fail(metrics, "", "no data rows");
  std::set<int> layers, heads;
  bool has_queries = false;
  for (const auto& r : out.rows) {
    if (std::find(out.rules.begin(), out.rules.end(), r.rule) == out.rules.end()) out.rules.push_back(r.rule);
    if (std::find(out.budgets.begin(), out.budgets.end(), r.budget) == out.budgets.end()) out.budgets.push_back(r.budget);
    layers.insert(r.layer);
    if (r.head >= 0) heads.insert(r.head);
    has_queries |= r.eval == "queries";
  }
  out.layers.assign(layers.begin(), layers.end());
  out.heads.assign(heads.begin(), heads.end());
  out.eval = has_queries ? "queries" : "window";
  return out;
}

}  // namespace kvsim::report
