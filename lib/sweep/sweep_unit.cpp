#include "sweep/sweep_unit.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "trace/trace_reader.h"

namespace kvsim {

using json = nlohmann::json;

namespace {

// JSON keeps doubles exactly (17 digits); NaN (the metrics of an empty window support) travels as null.
json num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }
double num(const json& j) { return j.is_null() ? std::nan("") : j.get<double>(); }

json to_json(const UnitRecord& r) {
  json totals = json::array();
  for (const auto& t : r.totals) {
    json values = json::object();  // the layer row by metric column name (metric_columns.h)
    for (std::size_t m = 0; m < kNumMetrics; ++m) values[std::string(kMetricColumns[m].column.name)] = num(t.agg.values[m]);
    totals.push_back({{"rule", t.rule}, {"budget", t.budget}, {"layer", t.layer}, {"budget_tokens", num(t.budget_tokens)},
                      {"select_seconds", num(t.select_seconds)}, {"kept_tokens", num(t.agg.kept_tokens)},
                      {"cache_ratio", num(t.agg.cache_ratio)},
                      {"values", std::move(values)}, {"tied_sum", num(t.tied_sum)}, {"tied_units", t.tied_units},
                      {"tied_max", t.tied_max}, {"question_pert_l1", t.question_pert_l1},
                      {"decode_cache_tokens", num(t.decode_cache_tokens)},
                      {"decode_compressions", t.decode_compressions}});
  }
  const auto& tm = r.timings;
  return {{"key", r.key},         {"status", r.status}, {"error", r.error},   {"rank", r.rank},
          {"host", r.host},       {"seconds", r.seconds},
          {"timings", {{"read", tm.read}, {"attention", tm.attention}, {"select", tm.select}, {"metrics", tm.metrics},
                       {"nu_hits", tm.nu_hits}, {"nu_misses", tm.nu_misses}, {"threads_min", tm.threads_min},
                       {"threads_max", tm.threads_max}, {"prob_tiles_peak_bytes", tm.prob_tiles_peak_bytes}}},
          {"totals", totals}};
}

UnitRecord from_json(const json& j) {
  UnitRecord r;
  r.key = j.at("key");
  r.status = j.at("status");
  r.error = j.at("error");
  r.rank = j.at("rank");
  r.host = j.value("host", "");
  r.seconds = j.at("seconds");
  const json& tm = j.at("timings");
  r.timings.read = tm.at("read");
  r.timings.attention = tm.at("attention");
  r.timings.select = tm.at("select");
  r.timings.metrics = tm.at("metrics");
  r.timings.nu_hits = tm.at("nu_hits");
  r.timings.nu_misses = tm.at("nu_misses");
  r.timings.threads_min = tm.value("threads_min", 0);  // absent in records of older sweeps
  r.timings.threads_max = tm.value("threads_max", 0);
  r.timings.prob_tiles_peak_bytes = tm.value("prob_tiles_peak_bytes", i64{0});
  for (const auto& e : j.at("totals")) {
    LayerTotal t;
    t.rule = e.at("rule");
    t.budget = e.at("budget");
    t.layer = e.at("layer");
    t.budget_tokens = num(e.at("budget_tokens"));
    t.select_seconds = num(e.at("select_seconds"));
    t.agg.kept_tokens = num(e.at("kept_tokens"));
    t.agg.cache_ratio = num(e.at("cache_ratio"));
    const json& values = e.at("values");
    for (std::size_t m = 0; m < kNumMetrics; ++m) t.agg.values[m] = num(values.at(std::string(kMetricColumns[m].column.name)));
    t.tied_sum = num(e.at("tied_sum"));
    t.tied_units = e.at("tied_units");
    t.tied_max = e.at("tied_max");
    // Multi-question and decode-protocol fields: absent in records of older sweeps.
    for (const auto& q : e.value("question_pert_l1", json::array())) t.question_pert_l1.push_back(num(q));
    t.decode_cache_tokens = e.contains("decode_cache_tokens") ? num(e.at("decode_cache_tokens")) : 0.0;
    t.decode_compressions = e.value("decode_compressions", i64{0});
    r.totals.push_back(t);
  }
  return r;
}

}  // namespace

std::string unit_dir(const std::string& out_dir, const SweepUnit& u) { return out_dir + "/units/" + u.id; }

UnitRecord run_unit(const SweepOptions& opt, const TracePlan& t, const SweepUnit& u, int rank, const std::string& host) {
  UnitRecord rec;
  rec.key = u.key;
  rec.rank = rank;
  rec.host = host;
  Stopwatch sw;
  const std::string dir = unit_dir(opt.out_dir, u);
  try {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) fail(dir, "", "cannot create the unit folder: " + ec.message());
    std::filesystem::remove(dir + "/unit.json", ec);  // an earlier failed or stale record
    const ReplayOptions ro = trace_options(opt, t, dir);
    TraceReader reader(t.path);
    const ReplaySetup setup = prepare_replay(ro, reader.meta());
    AtomicOutFile metrics(dir + "/" + std::string(metrics_schema().file));
    std::optional<AtomicOutFile> per_query, per_question;
    if (ro.per_query) per_query.emplace(dir + "/" + std::string(per_query_schema().file));
    if (!setup.questions.empty()) per_question.emplace(dir + "/" + std::string(per_question_schema().file));
    // Unit files have no header and the tables' names: the merge appends them under the trace
    // folder's one.
    CsvRowSink metric_rows(metrics.stream(), metrics_schema(), false);
    std::optional<CsvRowSink> query_rows, question_rows;
    if (per_query) query_rows.emplace(per_query->stream(), per_query_schema(), false);
    if (per_question) question_rows.emplace(per_question->stream(), per_question_schema(), false);
    ReplaySinks sinks;
    sinks.metrics = &metric_rows;
    sinks.per_query = query_rows ? &*query_rows : nullptr;
    sinks.per_question = question_rows ? &*question_rows : nullptr;
    rec.totals = replay_layers(ro, setup, reader, u.layers, sinks, rec.timings, nullptr);
    metrics.commit();
    if (per_query) per_query->commit();
    if (per_question) per_question->commit();
  } catch (const Error& e) {
    rec.status = "failed";
    rec.error = e.what();
    rec.totals.clear();
  } catch (const std::bad_alloc&) {
    rec.status = "failed";
    rec.error = t.path + ": out of memory";
    rec.totals.clear();
  }
  rec.seconds = sw.seconds();
  write_file_atomic(dir + "/unit.json", to_json(rec).dump(1) + "\n");
  return rec;
}

std::optional<UnitRecord> load_unit(const std::string& out_dir, const SweepUnit& u) {
  const std::string path = unit_dir(out_dir, u) + "/unit.json";
  std::ifstream in(path);
  if (!in) return std::nullopt;
  try {
    UnitRecord r = from_json(json::parse(in));
    if (r.key != u.key) return std::nullopt;
    const std::string metrics = unit_dir(out_dir, u) + "/" + std::string(metrics_schema().file);
    if (r.status == "ok" && !std::filesystem::exists(metrics)) return std::nullopt;
    return r;
  } catch (const json::exception&) {
    return std::nullopt;  // a truncated or foreign file: run the unit again
  }
}

}  // namespace kvsim
