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
  for (const auto& t : r.totals)
    totals.push_back({t.rule, t.budget, t.layer, num(t.budget_tokens), num(t.select_seconds), num(t.agg.kept_tokens),
                      num(t.agg.retained_mass), num(t.agg.pert_l1), num(t.agg.pert_l2), num(t.agg.rel_pert_l1),
                      num(t.agg.bound_ada), num(t.agg.bound_critical), num(t.tied_sum), t.tied_units, t.tied_max});
  const auto& tm = r.timings;
  return {{"key", r.key},         {"status", r.status}, {"error", r.error},   {"rank", r.rank},
          {"host", r.host},       {"seconds", r.seconds},
          {"timings", {{"read", tm.read}, {"attention", tm.attention}, {"select", tm.select}, {"metrics", tm.metrics},
                       {"nu_hits", tm.nu_hits}, {"nu_misses", tm.nu_misses}, {"threads_min", tm.threads_min},
                       {"threads_max", tm.threads_max}}},
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
  for (const auto& e : j.at("totals")) {
    LayerTotal t;
    t.rule = e.at(0);
    t.budget = e.at(1);
    t.layer = e.at(2);
    t.budget_tokens = num(e.at(3));
    t.select_seconds = num(e.at(4));
    t.agg.kept_tokens = num(e.at(5));
    t.agg.retained_mass = num(e.at(6));
    t.agg.pert_l1 = num(e.at(7));
    t.agg.pert_l2 = num(e.at(8));
    t.agg.rel_pert_l1 = num(e.at(9));
    t.agg.bound_ada = num(e.at(10));
    t.agg.bound_critical = num(e.at(11));
    t.tied_sum = num(e.at(12));
    t.tied_units = e.at(13);
    t.tied_max = e.at(14);
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
    AtomicOutFile metrics(dir + "/metrics.csv");
    std::optional<AtomicOutFile> per_query;
    if (ro.per_query) per_query.emplace(dir + "/metrics_per_query.csv");
    rec.totals = replay_layers(ro, setup, reader, u.layers, metrics.stream(), per_query ? &per_query->stream() : nullptr,
                               nullptr, rec.timings, nullptr);
    metrics.commit();
    if (per_query) per_query->commit();
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
    if (r.status == "ok" && !std::filesystem::exists(unit_dir(out_dir, u) + "/metrics.csv")) return std::nullopt;
    return r;
  } catch (const json::exception&) {
    return std::nullopt;  // a truncated or foreign file: run the unit again
  }
}

}  // namespace kvsim
