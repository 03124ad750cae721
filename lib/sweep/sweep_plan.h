#pragma once
// The plan of a sweep: its traces (opened once by rank 0) and the work units every rank derives
// from them in the same order. A unit's key names everything its rows depend on, so --resume
// reuses a finished unit only when the sweep would compute the very same rows.
#include <string>
#include <vector>

#include "sweep/sweep.h"

namespace kvsim {

struct TracePlan {
  std::string path, label;  // label: the per-trace output folder name
  int num_layers = 0;
  std::vector<int> layers;  // the layers the replay options select
  long long seq_len = 0;
  std::string error;  // set when the trace cannot be replayed with these options
};

struct SweepUnit {
  int trace = 0;
  std::vector<int> layers;  // ascending, consecutive in the trace's layer list
  std::string id;           // folder name under DIR/units
  std::string key;          // the unit's identity for --resume
  double cost = 0;          // for ordering: positions x layers
};

// The names a sweep writes in its --out folder besides the per-trace folders.
inline constexpr const char* kSweepReservedNames[] = {"units", "nu-cache", "sweep.json", "sweep_metrics.csv"};
// Per-trace folder names from the trace paths: folder-safe file stems, never a reserved name, a
// hidden or a partial-file name, unique by construction (later duplicates get stem-2, -3, ...
// past every other trace's own stem).
std::vector<std::string> sweep_labels(const std::vector<std::string>& paths);
// True for names a per-trace folder may not have: reserved, empty, hidden or "*.partial".
bool is_reserved_label(const std::string& label);

// Opens every trace (metadata only) and checks the replay options against it (rank 0).
std::vector<TracePlan> plan_traces(const SweepOptions& opt);
std::string plan_to_json(const std::vector<TracePlan>& plan);
std::vector<TracePlan> plan_from_json(const std::string& text);

// Units of the plan, largest first (so that the dynamic hand-out balances well).
std::vector<SweepUnit> plan_units(const SweepOptions& opt, const std::vector<TracePlan>& plan);

// The replay options of one trace of the sweep (trace path, out folder, command filled in).
ReplayOptions trace_options(const SweepOptions& opt, const TracePlan& t, const std::string& out_dir);

}  // namespace kvsim
