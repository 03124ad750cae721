#pragma once
// The end of a sweep (rank 0): per-trace replay folders from the unit files, the merged table and
// sweep.json.
#include <ostream>
#include <string>
#include <vector>

#include "core/output_folder.h"
#include "sweep/sweep_unit.h"

namespace kvsim {

struct RankStats {
  int rank = 0;
  std::string host;
  int units = 0;
  double busy_seconds = 0, wall_seconds = 0;
};

// Writes DIR/<label>/{metrics.csv, metrics_per_query.csv, summary.json} for every trace whose
// units all succeeded, DIR/sweep_metrics.csv and DIR/sweep.json (last); prints one line per trace.
// An earlier sweep's results in DIR are replaced (the OutputFolder policy): its sweep.json goes
// first, then each per-trace folder drops the files this sweep does not write, and after the new
// sweep.json the trace folders and units of the earlier sweep that this one does not have.
// records[i] belongs to units[i]. Returns the number of failed traces.
int merge_sweep(const SweepOptions& opt, OutputFolder& folder, const std::vector<TracePlan>& plan,
                const std::vector<SweepUnit>& units,
                const std::vector<UnitRecord>& records, const std::vector<RankStats>& ranks, double wall_seconds,
                std::ostream& table);

}  // namespace kvsim
