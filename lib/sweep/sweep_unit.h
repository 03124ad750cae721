#pragma once
// One work unit of a sweep: replay_layers over a layer range of one trace, its rows written to
// DIR/units/<id>/metrics.csv (+ metrics_per_query.csv) without header, and unit.json, written
// last and atomically: its presence with status "ok" and the same key is what --resume trusts.
#include <optional>
#include <string>
#include <vector>

#include "replay/replay.h"
#include "sweep/sweep_plan.h"

namespace kvsim {

struct UnitRecord {
  std::string key, status = "ok", error;  // status: ok | failed
  int rank = 0;
  double seconds = 0;
  std::string host;
  ReplayTimings timings;
  std::vector<LayerTotal> totals;
  bool resumed = false;  // found finished on disk, not computed by this run
};

std::string unit_dir(const std::string& out_dir, const SweepUnit& u);

// Runs the unit (a failure becomes a failed record, not an exception) and writes unit.json.
UnitRecord run_unit(const SweepOptions& opt, const TracePlan& t, const SweepUnit& u, int rank, const std::string& host);

// The unit's finished record from disk, if it has one for the same key (any status).
std::optional<UnitRecord> load_unit(const std::string& out_dir, const SweepUnit& u);

}  // namespace kvsim
