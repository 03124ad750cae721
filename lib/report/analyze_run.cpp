#include "report/analyze_run.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <sstream>

#include "core/error.h"
#include "core/output_folder.h"
#include "core/progress.h"
#include "core/ranges.h"
#include "core/run_header.h"
#include "core/sysinfo.h"
#include "kernels/isa.h"
#include "report/analysis_files.h"
#include "report/key_stats.h"
#include "trace/trace_reader.h"
#include "trace/trace_summary.h"

namespace kvsim::report {

AnalyzeResult run_analysis(const AnalyzeOptions& o) {
  if (o.out_dir.empty() && !o.collect) fail("--out", "", "an output folder is required");
  const std::string& cp = o.compression_point;
  if (cp != "agnostic" && cp != "aware") fail("--compression-point", cp, "expected agnostic or aware");
  if (o.window < 0) fail("--window", std::to_string(o.window), "must be >= 0");
  Stopwatch total;
  TraceReader reader(o.trace_path);
  const TraceMeta& meta = reader.meta();
  std::unique_ptr<OutputFolder> folder;  // made once the options are checked, held for the run
  const i64 n_c = cp == "agnostic" ? meta.context_end() : meta.prefill_len;
  if (n_c < 1) fail(o.trace_path, "/tokens/segment", "empty compressible span (n_c = 0)");
  const i64 window = std::min<i64>(o.window, n_c);
  const auto layers = parse_index_list(o.layers, meta.num_layers, "--layers");
  KeyStatsOptions opt;
  opt.n_c = n_c;
  opt.window = window;
  opt.attn_scale = meta.attn_scale;
  opt.attn_softcap = meta.attn_softcap;
  opt.top = parse_top_list(o.top, n_c);

  i64 n_eval = 0, n_window = 0;
  for (i64 p : meta.q_pos) {
    n_eval += p >= n_c;
    n_window += p >= n_c - window && p < n_c;
  }
  if (n_eval == 0 && n_window == 0)
    fail(o.trace_path, "/q_pos", "no stored query at or after n_c = " + std::to_string(n_c) + " nor in the window");

  if (!o.out_dir.empty()) folder = std::make_unique<OutputFolder>("kvsim analyze", o.out_dir, "summary.json");
  std::vector<HeadKeyStats> stats;
  double read_s = 0, compute_s = 0;
  {
    Progress progress("analyze", static_cast<std::int64_t>(layers.size()));
    LayerRequest req;
    req.v = false;
    req.o_proj = false;
    for (int l : layers) {
      Stopwatch sw;
      const LayerData data = reader.read_layer(l, req);
      read_s += sw.seconds();
      sw.reset();
      auto s = key_stats_for_layer(data, meta.q_pos, opt);
      compute_s += sw.seconds();
      stats.insert(stats.end(), s.begin(), s.end());
      progress.advance();
    }
  }


  Json j = run_header(o.command, kernels::isa_name(kernels::active_isa()));
  j["analysis"] = "keydiff-premise";
  j["trace"] = trace_summary(meta, o.trace_path);
  j["protocol"] = {{"compression_point", cp},
                   {"n_c", static_cast<std::int64_t>(n_c)},
                   {"window", static_cast<std::int64_t>(window)},
                   {"n_eval_queries", static_cast<std::int64_t>(n_eval)},
                   {"n_window_queries", static_cast<std::int64_t>(n_window)},
                   {"layers", layers}};
  j["top"] = Json::array();
  for (const auto& t : opt.top) j["top"].push_back({{"top", t.text}, {"tokens", static_cast<std::int64_t>(t.tokens)}});
  // Means over every analysed head, per evaluation set.
  std::map<std::string, std::vector<const HeadKeyStats*>> by_eval;
  for (const auto& s : stats) by_eval[s.eval].push_back(&s);
  j["means"] = Json::object();
  for (const auto& [ev, v] : by_eval) {
    double sp = 0, m90 = 0;
    std::int64_t nsp = 0;
    std::vector<double> rec(opt.top.size(), 0.0);
    for (const auto* s : v) {
      if (s->spearman == s->spearman) { sp += s->spearman; ++nsp; }
      m90 += s->mass_frac_90;
      for (std::size_t i = 0; i < rec.size(); ++i) rec[i] += s->recall[i];
    }
    Json recall = Json::object();
    for (std::size_t i = 0; i < rec.size(); ++i) recall[opt.top[i].text] = rec[i] / static_cast<double>(v.size());
    j["means"][ev] = {{"heads", static_cast<std::int64_t>(v.size())},
                      {"spearman_mean", nsp ? sp / static_cast<double>(nsp) : std::nan("")},
                      {"mass_frac_90_mean", m90 / static_cast<double>(v.size())},
                      {"recall_mean", std::move(recall)}};
  }
  j["timings"] = {{"read_seconds", read_s}, {"compute_seconds", compute_s}, {"total_seconds", total.seconds()}};
  j["peak_rss_bytes"] = static_cast<std::int64_t>(peak_rss_bytes());
  AnalyzeResult result;
  result.summary = j;
  if (o.collect) {
    result.key_stats = ColumnTable(key_stats_schema());
    result.key_recall = ColumnTable(key_recall_schema());
    ColumnTableSink stats_rows(result.key_stats), recall_rows(result.key_recall);
    write_key_stats(stats_rows, stats);
    write_key_recall(recall_rows, stats, opt.top);
  }
  if (folder) {
    std::ostringstream stats_csv, recall_csv;
    CsvRowSink stats_rows(stats_csv, key_stats_schema()), recall_rows(recall_csv, key_recall_schema());
    write_key_stats(stats_rows, stats);
    write_key_recall(recall_rows, stats, opt.top);
    folder->publish({{"key_stats.csv", stats_csv.str()}, {"key_recall.csv", recall_csv.str()}, {"summary.json", json_text(j)}},
                    kAnalyzeOutputs);
  }


  // The short table: per layer and evaluation set, mean correlation and first recall.
  char line[256];
  std::snprintf(line, sizeof line, "%-6s %-8s %6s %10s %12s\n", "layer", "eval", "heads", "spearman", "recall@");
  result.table = line;
  std::map<std::pair<int, std::string>, std::pair<double, double>> acc;
  std::map<std::pair<int, std::string>, int> count;
  for (const auto& s : stats) {
    auto& a = acc[{s.layer, s.eval}];
    a.first += s.spearman;
    a.second += s.recall.empty() ? 0 : s.recall[0];
    ++count[{s.layer, s.eval}];
  }
  for (const auto& [k, a] : acc) {
    const double n = count[k];
    std::snprintf(line, sizeof line, "%-6d %-8s %6d %10.4f %12.4f\n", k.first, k.second.c_str(), count[k], a.first / n,
                  a.second / n);
    result.table += line;
  }
  result.table += "recall@ = top " + (opt.top.empty() ? std::string("-") : opt.top[0].text) +
                  (o.out_dir.empty() ? "\n" : "; files in " + o.out_dir + "\n");
  return result;
}

}  // namespace kvsim::report
