#include "sweep/sweep_plan.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/ranges.h"
#include "trace/trace_reader.h"

namespace kvsim {

using json = nlohmann::json;

bool is_reserved_label(const std::string& label) {
  for (const char* r : kSweepReservedNames)
    if (label == r) return true;
  const std::string partial = ".partial";
  return label.empty() || label[0] == '.' ||
         (label.size() >= partial.size() && label.compare(label.size() - partial.size(), partial.size(), partial) == 0);
}

std::vector<std::string> sweep_labels(const std::vector<std::string>& paths) {
  std::vector<std::string> stems;
  for (const auto& p : paths) {
    std::string stem = std::filesystem::path(p).stem().string();
    for (char& c : stem)
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '_';
    if (is_reserved_label(stem)) stem = "trace_" + stem;
    if (is_reserved_label(stem)) stem = "trace";  // "trace_x.partial": still a partial name
    stems.push_back(stem);
  }
  // Every stem is taken as is by its first trace; later ones get stem-2, stem-3, ... skipping any
  // name that is another trace's stem or already given, so a/niah, b/niah-2, c/niah are niah,
  // niah-2, niah-3: unique by construction.
  std::set<std::string> taken(stems.begin(), stems.end());
  std::set<std::string> given;
  std::vector<std::string> out;
  for (const auto& stem : stems) {
    std::string label = stem;
    if (given.count(label)) {
      for (int n = 2;; ++n) {
        label = stem + "-" + std::to_string(n);
        if (!taken.count(label)) break;
      }
      taken.insert(label);
    }
    given.insert(label);
    out.push_back(label);
  }
  return out;
}

ReplayOptions trace_options(const SweepOptions& opt, const TracePlan& t, const std::string& out_dir) {
  ReplayOptions r = opt.replay;
  r.trace_path = t.path;
  r.out_dir = out_dir;
  r.command = opt.command;
  r.save_selection = false;
  return r;
}

std::vector<TracePlan> plan_traces(const SweepOptions& opt) {
  std::vector<TracePlan> plan;
  const auto labels = sweep_labels(opt.traces);
  for (std::size_t i = 0; i < opt.traces.size(); ++i) {
    TracePlan t;
    t.path = opt.traces[i];
    t.label = labels[i];
    try {
      TraceReader reader(t.path);
      const ReplaySetup setup = prepare_replay(trace_options(opt, t, ""), reader.meta());
      t.num_layers = reader.meta().num_layers;
      t.layers = setup.layers;
      t.seq_len = reader.meta().seq_len;
    } catch (const Error& e) {
      t.error = e.what();
    }
    plan.push_back(std::move(t));
  }
  return plan;
}

std::string plan_to_json(const std::vector<TracePlan>& plan) {
  json j = json::array();
  for (const auto& t : plan)
    j.push_back({{"path", t.path}, {"label", t.label}, {"num_layers", t.num_layers}, {"layers", t.layers},
                 {"seq_len", t.seq_len}, {"error", t.error}});
  return j.dump();
}

std::vector<TracePlan> plan_from_json(const std::string& text) {
  std::vector<TracePlan> plan;
  for (const auto& e : json::parse(text)) {
    TracePlan t;
    t.path = e.at("path");
    t.label = e.at("label");
    t.num_layers = e.at("num_layers");
    t.layers = e.at("layers").get<std::vector<int>>();
    t.seq_len = e.at("seq_len");
    t.error = e.at("error");
    plan.push_back(std::move(t));
  }
  return plan;
}

std::vector<SweepUnit> plan_units(const SweepOptions& opt, const std::vector<TracePlan>& plan) {
  const ReplayOptions& r = opt.replay;
  // Everything a unit's rows depend on, besides its layers (threads and caches do not change them),
  // and the unit record's format: records of an older format (unit.json without the per-question
  // and decode fields) are run again, never merged.
  const std::string common = "record=2|rules=" + r.rules + "|budgets=" + r.budgets + "|heads=" + r.heads +
                             "|cp=" + compression_point_name(r.protocol.compression_point) +
                             "|window=" + std::to_string(r.protocol.window) + "|eval=" + eval_mode_name(r.protocol.eval) +
                             "|protocol=" + protocol_text(r.protocol) +
                             "|nu=" + norm_kind_name(r.nu) + "|per_query=" + (r.per_query ? "1" : "0");
  std::vector<SweepUnit> units;
  const int per = std::max(1, opt.layers_per_unit);
  for (std::size_t ti = 0; ti < plan.size(); ++ti) {
    const TracePlan& t = plan[ti];
    if (!t.error.empty()) continue;
    std::error_code ec;
    const auto size = std::filesystem::file_size(t.path, ec);
    const auto mtime = std::filesystem::last_write_time(t.path, ec).time_since_epoch().count();
    for (std::size_t a = 0; a < t.layers.size(); a += per) {
      SweepUnit u;
      u.trace = static_cast<int>(ti);
      u.layers.assign(t.layers.begin() + a, t.layers.begin() + std::min(t.layers.size(), a + per));
      u.id = std::to_string(ti) + "_" + t.label + "_L" + std::to_string(u.layers.front()) + "-" +
             std::to_string(u.layers.back());
      u.key = "trace=" + std::filesystem::absolute(t.path).string() + "|size=" + std::to_string(size) +
              "|mtime=" + std::to_string(mtime) + "|layers=" + std::to_string(u.layers.front()) + "-" +
              std::to_string(u.layers.back()) + "|n=" + std::to_string(u.layers.size()) + "|" + common;
      u.cost = static_cast<double>(t.seq_len) * static_cast<double>(u.layers.size());
      units.push_back(std::move(u));
    }
  }
  std::stable_sort(units.begin(), units.end(), [](const SweepUnit& a, const SweepUnit& b) { return a.cost > b.cost; });
  return units;
}

}  // namespace kvsim
