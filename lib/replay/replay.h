#pragma once
// The replay driver: trace x rules x budgets -> metrics.csv, metrics_per_query.csv,
// summary.json, selection.h5 (docs/outputs.md). One layer is resident at a time; all stored
// query rows are loaded (rules may read any prompt query, e.g. H2O reads all of them).
// The --out folder follows core/output_folder.h: locked for the run, every output written to a
// partial file and renamed only when the whole run succeeded, an earlier run's other outputs
// removed then.
//
// replay() is the typed entry (the Python API calls it): prepare_replay + replay_layers over every
// layer + replay_summary, its rows as columnar tables in memory and/or files in --out. run_replay
// is the CLI over it. kvsim sweep runs replay_layers on layer ranges (units) elsewhere and merges
// them, with the same rows and the same summary sums as one replay.
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "attention/layer_cache.h"
#include "core/columns.h"
#include "core/json.h"
#include "replay/metric_rows.h"
#include "replay/protocol.h"
#include "rules/budget.h"
#include "rules/rule.h"

namespace kvsim {

class Progress;
class SelectionFile;
class TraceReader;

// Every file a replay can write into its --out folder (summary.json, the marker, last).
inline const std::vector<std::string> kReplayOutputs = {"metrics.csv", "metrics_per_query.csv",
                                                        "metrics_per_question.csv", "selection.h5", "summary.json"};

struct ReplayOptions {
  std::string trace_path;
  std::string rules;    // "spec;spec"
  std::string budgets;  // "0.1,0.2,512"
  std::string out_dir;
  std::string layers = "all", heads = "all";  // heads filters the head rows; layer rows use every head
  ProtocolOptions protocol;
  bool per_query = false, save_selection = false;
  int threads = 0;                // 0: OpenMP default
  NormKind nu = NormKind::l1;     // value norm of the bounds: exact l1 or the cheap upper bound
  std::string nu_cache_dir;       // on-disk cache of exact value norms (attention/norm_cache.h); "": none
  std::string command;            // argv joined, for summary.json
  bool collect = false;           // keep the rows (and kept masks) in memory: ReplayResult
};

// "exact" | "upper" (--nu); throws kvsim::Error naming --nu.
NormKind parse_bound_norm(const std::string& s);

// Everything the options and the trace fix before any layer is read.
struct ReplaySetup {
  TraceMeta meta;
  Protocol protocol;
  std::vector<int> layers, heads;
  std::vector<Budget> budgets;
  std::vector<i64> budget_tokens;  // nominal tokens per unit of each budget at n_c (per-layer: mean; thr: -1)
  std::vector<std::unique_ptr<Rule>> rules;
  std::vector<QuestionSpan> questions;  // /spans/question_K of a multi-question trace, else empty
};
// Throws kvsim::Error naming the option or the trace field.
ReplaySetup prepare_replay(const ReplayOptions& opt, const TraceMeta& meta);

// What summary.json sums for one (rule, budget, layer): the layer row of the summary query set.
struct LayerTotal {
  int rule = 0, budget = 0, layer = 0;
  double budget_tokens = 0;  // the rule's layer budget (pyramid) or the nominal one
  double select_seconds = 0;
  LayerAggregate agg;
  double tied_sum = 0;  // Selection::tied_at_cut over the layer's units
  i64 tied_units = 0, tied_max = 0;
  std::vector<double> question_pert_l1;  // multi-question traces: the layer's pert_l1 per question
  double decode_cache_tokens = 0;  // decode protocol: the mean tokens an evaluation query's cache held (per unit)
  i64 decode_compressions = 0;     // decode protocol: compressions after n_c
};

struct ReplayTimings {
  double read = 0, attention = 0, select = 0, metrics = 0;
  i64 nu_hits = 0, nu_misses = 0;
  // Threads the replay ran with (core_share.h: fewer while other processes keep cores busy,
  // unless --threads fixed the count); 0 before any layer.
  int threads_min = 0, threads_max = 0;
  // The most bytes of attention-probability tiles a layer held at once (LayerCache::prob_bytes_peak).
  i64 prob_tiles_peak_bytes = 0;
  void add(const ReplayTimings& o);
};

// One kept set as selection.h5 stores it (Selection without the step-wise masks).
struct SavedSelection {
  int rule = 0, budget = 0, layer = 0;
  std::string rule_spec, budget_text;
  int num_kv_heads = 0;
  Selection selection;
};

// Where replay_layers puts what it computes; any may be null.
struct ReplaySinks {
  RowSink* metrics = nullptr;    // metrics.csv rows
  RowSink* per_query = nullptr;  // metrics_per_query.csv rows
  RowSink* per_question = nullptr;  // metrics_per_question.csv rows (multi-question traces)
  SelectionFile* file = nullptr;                 // selection.h5
  std::vector<SavedSelection>* kept = nullptr;   // kept masks in memory
};

// Replays `layers` (ascending, a subset of setup.layers) into `sinks`. progress may be null.
std::vector<LayerTotal> replay_layers(const ReplayOptions& opt, const ReplaySetup& setup, const TraceReader& reader,
                                      const std::vector<int>& layers, const ReplaySinks& sinks, ReplayTimings& timings,
                                      Progress* progress);

struct ReplaySummary {
  Json json;          // summary.json
  std::string table;  // the short table the CLI prints
};
// summary.json (written into opt.out_dir unless it is empty) and the short table: the totals (of
// any layers, in any order) are summed in the order of setup.layers, so a merge of ranges equals one run.
// trace_sha256: the trace file's digest if already known, else computed here.
ReplaySummary replay_summary(const ReplayOptions& opt, const ReplaySetup& setup, std::vector<LayerTotal> totals,
                             const ReplayTimings& timings, double total_seconds, const std::string& trace_sha256 = "");

struct ReplayResult {
  ColumnTable metrics, per_query;         // with opt.collect (per_query: with opt.per_query too)
  ColumnTable per_question;               // with opt.collect, for a multi-question trace
  std::vector<SavedSelection> selection;  // with opt.collect and opt.save_selection
  ReplaySummary summary;
};

// Runs the replay: files in opt.out_dir when it is set (atomically, docs/outputs.md), the tables
// in memory with opt.collect (one of the two is required). Throws kvsim::Error.
ReplayResult replay(const ReplayOptions& opt);

// The CLI: replay() into opt.out_dir, the short table printed to `table`.
void run_replay(const ReplayOptions& opt, std::ostream& table);

}  // namespace kvsim
