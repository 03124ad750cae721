#include "sweep/sweep_merge.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <sstream>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/blas_kernels.h"
#include "core/error.h"
#include "core/run_header.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "trace/trace_reader.h"

#ifndef KVSIM_VERSION
#error "KVSIM_VERSION comes from CMakeLists.txt (project VERSION)"
#endif

namespace kvsim {

using json = nlohmann::json;

namespace {

// Appends the unit file's rows (it has no header) to out.
void append_rows(std::ostream& out, const std::string& path) { out << read_whole_file(path); }

// The same rows with a trace column in front.
void append_labelled(std::ostream& out, const std::string& label, const std::string& path) {
  std::istringstream rows(read_whole_file(path));
  const std::string prefix = csv_field(label) + ",";
  for (std::string line; std::getline(rows, line);)
    if (!line.empty()) out << prefix << line << "\n";
}

// The per-trace folder labels an earlier sweep.json in DIR names ({} when there is none).
std::vector<std::string> earlier_labels(const std::string& out_dir) {
  std::vector<std::string> labels;
  try {
    const json j = json::parse(read_whole_file(out_dir + "/sweep.json"));
    for (const auto& t : j.at("traces")) labels.push_back(t.at("label").get<std::string>());
  } catch (...) {  // no earlier sweep, or not ours: nothing of it is removed
  }
  return labels;
}

// After the new sweep.json: what the earlier sweep left that this one does not have. Only kvsim's
// own file names are removed, and a folder only when that leaves it empty.
void remove_earlier_sweep(const std::string& out_dir, const std::vector<std::string>& old_labels,
                          const std::vector<TracePlan>& plan, const std::vector<SweepUnit>& units) {
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const auto& label : old_labels) {
    if (label.find('/') != std::string::npos || label == ".." || label == "." || is_reserved_label(label)) continue;
    const bool kept = std::any_of(plan.begin(), plan.end(), [&](const TracePlan& t) { return t.label == label; });
    if (kept) continue;
    remove_stale_outputs(out_dir + "/" + label, kReplayOutputs, {});
    fs::remove(out_dir + "/" + label, ec);  // only if empty
  }
  for (const auto& e : fs::directory_iterator(out_dir + "/units", ec)) {
    const std::string id = e.path().filename().string();
    const bool kept = std::any_of(units.begin(), units.end(), [&](const SweepUnit& u) { return u.id == id; });
    if (!kept && e.is_directory()) fs::remove_all(e.path(), ec);
  }
}

}  // namespace

int merge_sweep(const SweepOptions& opt, OutputFolder& folder, const std::vector<TracePlan>& plan,
                const std::vector<SweepUnit>& units,
                const std::vector<UnitRecord>& records, const std::vector<RankStats>& ranks, double wall_seconds,
                std::ostream& table) {
  const std::vector<std::string> old_labels = earlier_labels(opt.out_dir);
  folder.clear_previous({"sweep_metrics.csv"}, {"sweep_metrics.csv"});  // the earlier sweep.json first
  AtomicOutFile sweep_metrics(opt.out_dir + "/sweep_metrics.csv");
  sweep_metrics.stream() << sweep_metrics_schema().header() << "\n";
  json traces = json::array();
  int failed = 0;
  char line[512];
  std::snprintf(line, sizeof line, "%-32s %-8s %7s %6s %10s  %s\n", "trace", "status", "layers", "units", "seconds",
                "output");
  table << line;
  for (std::size_t ti = 0; ti < plan.size(); ++ti) {
    const TracePlan& t = plan[ti];
    std::vector<std::size_t> mine;
    for (std::size_t i = 0; i < units.size(); ++i)
      if (units[i].trace == static_cast<int>(ti)) mine.push_back(i);
    std::sort(mine.begin(), mine.end(), [&](std::size_t a, std::size_t b) { return units[a].layers[0] < units[b].layers[0]; });
    std::string error = t.error;
    for (std::size_t i : mine)
      if (error.empty() && records[i].status != "ok") error = records[i].error;
    const std::string out = opt.out_dir + "/" + t.label;
    double seconds = 0;
    for (std::size_t i : mine) seconds += records[i].seconds;
    if (error.empty()) {
      try {
        std::error_code ec;
        std::filesystem::create_directories(out, ec);
        if (ec) fail(out, "", "cannot create: " + ec.message());
        const ReplayOptions ro = trace_options(opt, t, out);
        TraceReader reader(t.path);
        const ReplaySetup setup = prepare_replay(ro, reader.meta());
        // The row tables the units wrote (metrics.csv always, per-query and per-question ones when
        // the replay writes them), each the units' files in layer order under one header.
        std::vector<const TableSchema*> schemas = {&metrics_schema()};
        if (ro.per_query) schemas.push_back(&per_query_schema());
        if (!setup.questions.empty()) schemas.push_back(&per_question_schema());
        std::vector<std::unique_ptr<AtomicOutFile>> files;
        for (const TableSchema* schema : schemas) {
          files.push_back(std::make_unique<AtomicOutFile>(out + "/" + std::string(schema->file)));
          files.back()->stream() << schema->header() << "\n";
        }
        std::vector<LayerTotal> totals;
        ReplayTimings tm;
        for (std::size_t i : mine) {
          const std::string dir = unit_dir(opt.out_dir, units[i]);
          for (std::size_t f = 0; f < files.size(); ++f)
            append_rows(files[f]->stream(), dir + "/" + std::string(schemas[f]->file));
          append_labelled(sweep_metrics.stream(), t.label, dir + "/" + std::string(metrics_schema().file));
          totals.insert(totals.end(), records[i].totals.begin(), records[i].totals.end());
          tm.add(records[i].timings);
        }
        for (auto& f : files) f->finish();
        ::unlink((out + "/summary.json").c_str());  // this trace folder's marker goes before its files
        for (auto& f : files) f->commit();
        // The per-trace rule table is not printed: the sweep prints one line per trace.
        replay_summary(ro, setup, std::move(totals), tm, seconds);
        std::vector<std::string> written = {"summary.json"};
        for (const TableSchema* schema : schemas) written.emplace_back(schema->file);
        remove_stale_outputs(out, kReplayOutputs, written);
      } catch (const Error& e) {
        error = e.what();
      }
    }
    failed += !error.empty();
    json tj = {{"path", t.path}, {"label", t.label}, {"status", error.empty() ? "ok" : "failed"},
               {"num_layers", t.num_layers}, {"layers", t.layers}, {"units", mine.size()}, {"seconds", seconds}};
    if (!error.empty()) tj["error"] = error;
    else tj["out"] = out;
    traces.push_back(tj);
    std::snprintf(line, sizeof line, "%-32s %-8s %7zu %6zu %10.2f  %s\n", t.label.substr(0, 32).c_str(),
                  error.empty() ? "ok" : "FAILED", t.layers.size(), mine.size(), seconds,
                  error.empty() ? out.c_str() : error.c_str());
    table << line;
  }
  sweep_metrics.commit();

  json ju = json::array();
  for (std::size_t i = 0; i < units.size(); ++i) {
    const UnitRecord& r = records[i];
    json u = {{"id", units[i].id},   {"trace", plan[units[i].trace].label},
              {"layers", {units[i].layers.front(), units[i].layers.back()}},
              {"status", r.status},  {"rank", r.rank}, {"host", r.host}, {"seconds", r.seconds},
              {"resumed", r.resumed}};
    if (!r.error.empty()) u["error"] = r.error;
    ju.push_back(u);
  }
  json jr = json::array();
  for (const auto& r : ranks)
    jr.push_back({{"rank", r.rank}, {"host", r.host}, {"units", r.units}, {"busy_seconds", r.busy_seconds},
                  {"wall_seconds", r.wall_seconds}});
  int unit_failures = 0, resumed = 0;
  for (const auto& r : records) {
    unit_failures += r.status != "ok";
    resumed += r.resumed;
  }
  const ReplayOptions& ro = opt.replay;
  json j = {{"kvsim_version", KVSIM_VERSION},
            {"source_revision", source_revision()},
            {"command", opt.command},
            {"created", iso_timestamp()},
            {"blas", blas_json(blas_info())},
            {"ranks", static_cast<int>(ranks.size())},
            {"options", {{"rules", ro.rules}, {"budgets", ro.budgets}, {"layers", ro.layers}, {"heads", ro.heads},
                         {"compression_point", compression_point_name(ro.protocol.compression_point)},
                         {"window", ro.protocol.window}, {"eval", eval_mode_name(ro.protocol.eval)},
                         {"protocol", protocol_text(ro.protocol)},
                         {"nu", norm_kind_name(ro.nu)}, {"nu_cache", ro.nu_cache_dir}, {"per_query", ro.per_query},
                         {"layers_per_unit", opt.layers_per_unit}}},
            {"traces", traces},
            {"units", ju},
            {"rank_stats", jr},
            {"failures", {{"traces", failed}, {"units", unit_failures}}},
            {"resumed_units", resumed},
            {"wall_seconds", wall_seconds}};
  if (!opt.config.empty()) j["config"] = json::parse(opt.config);  // the study file, as read
  write_file_atomic(opt.out_dir + "/sweep.json", j.dump(1) + "\n");
  remove_earlier_sweep(opt.out_dir, old_labels, plan, units);
  folder.done();
  return failed;
}

}  // namespace kvsim
