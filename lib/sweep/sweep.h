#pragma once
// kvsim sweep: a study of many traces x rules x budgets, split into work units (trace, layer
// range) that any number of processes take from a shared counter (MPI under kvsim-mpi, one
// process under kvsim). Every unit's rows are written atomically under DIR/units/; a rerun with
// --resume skips the finished ones. When all are done, rank 0 merges them into per-trace folders
// holding exactly the metrics.csv (and metrics_per_query.csv) rows and summary.json aggregates a
// single `kvsim replay` of that trace writes, whatever the number of processes, plus
// DIR/sweep_metrics.csv (one table, a trace column in front) and DIR/sweep.json (traces, units,
// per-rank timings, failures).
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "replay/replay.h"

namespace kvsim {

struct SweepOptions {
  std::vector<std::string> traces;  // paths, in the order of the study
  ReplayOptions replay;             // rules, budgets, protocol, nu, heads, per_query, threads, nu_cache_dir
  std::string out_dir;
  int layers_per_unit = 8;
  bool resume = false;  // reuse finished units found in out_dir
  bool force = false;   // discard finished units found in out_dir
  std::string command;
  std::string config;  // --config: the study file's path and settings as JSON text ("" without one)
};

// What the processes of one sweep share. Rank 0 plans, hands out nothing (the counter does) and
// merges at the end.
class SweepComm {
 public:
  virtual ~SweepComm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual long long next_unit() = 0;  // 0, 1, 2, ... across every process, each value once
  virtual void barrier() = 0;
  virtual void broadcast(std::string& text) = 0;                         // rank 0's text to all
  virtual std::vector<std::string> gather(const std::string& text) = 0;  // all texts on rank 0
  virtual std::string host() const;
};
std::unique_ptr<SweepComm> make_local_comm();  // one process

// Runs the sweep; returns the exit code (0: every unit and trace done, 1: some failed: see
// sweep.json). Throws kvsim::Error for bad options (before any work).
int run_sweep(const SweepOptions& opt, SweepComm& comm, std::ostream& table);

}  // namespace kvsim
