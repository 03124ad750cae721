// kvsim analyze: statistics that need the trace itself (spec section 4.3, KeyDiff premise):
// Spearman correlation between key distinctiveness and attention, top-N recall, attention-mass
// concentration, per (layer, query head). Writes key_stats.csv, key_recall.csv, summary.json.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "core/output_folder.h"
#include "core/output_path.h"
#include "core/progress.h"
#include "core/ranges.h"
#include "core/run_header.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "kernels/isa.h"
#include "report/analysis_files.h"
#include "report/key_stats.h"
#include "trace/trace_reader.h"
#include "trace/trace_summary.h"

namespace kvsim::cli {
namespace {

int cmd_analyze(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  po::options_description opts("kvsim analyze TRACE --out DIR [options]");
  opts.add_options()("help,h", "show this help")
      ("out,o", po::value<std::string>(), "output folder (created if missing)")
      ("layers", po::value<std::string>()->default_value("all"), "layers to analyse, e.g. 0-3,7")
      ("compression-point", po::value<std::string>()->default_value("agnostic"),
       "agnostic: compress at the end of the context; aware: at prefill_len")
      ("window", po::value<long long>()->default_value(32), "observation window (queries just before n_c)")
      ("top", po::value<std::string>()->default_value("0.05,0.1,0.2,0.4"),
       "N for the top-N recall: fractions of n_c (< 1) or token counts");
  po::options_description hidden;
  hidden.add_options()("trace", po::value<std::string>(), "");
  po::options_description all;
  all.add(opts).add(hidden);
  const po::variables_map vm = parse_args(args, all, "trace");
  if (vm.count("help")) {
    std::cout << "Per (layer, query head): Spearman correlation (average ranks) between KeyDiff's key\n"
                 "distinctiveness -cos(k_j, mu) over the compressed span [0, n_c) and the attention each key\n"
                 "receives (mean over evaluation queries, and over the observation window); recall of the\n"
                 "attention top-N by KeyDiff's top-N; attention-mass concentration (share of keys holding 90%\n"
                 "of the span mass, normalised entropy).\n\n"
              << opts;
    return 0;
  }
  if (!vm.count("trace")) throw po::error("give a trace file");
  if (!vm.count("out")) throw po::error("--out is required");
  const std::string trace_path = vm["trace"].as<std::string>(), out_dir = vm["out"].as<std::string>();
  const std::string cp = vm["compression-point"].as<std::string>();
  if (cp != "agnostic" && cp != "aware") fail("--compression-point", cp, "expected agnostic or aware");
  if (vm["window"].as<long long>() < 0) fail("--window", std::to_string(vm["window"].as<long long>()), "must be >= 0");

  Stopwatch total;
  TraceReader reader(trace_path);
  const TraceMeta& meta = reader.meta();
  std::unique_ptr<OutputFolder> folder;  // made once the options are checked, held for the run
  const i64 n_c = cp == "agnostic" ? meta.context_end() : meta.prefill_len;
  if (n_c < 1) fail(trace_path, "/tokens/segment", "empty compressible span (n_c = 0)");
  const i64 window = std::min<i64>(vm["window"].as<long long>(), n_c);
  const auto layers = parse_index_list(vm["layers"].as<std::string>(), meta.num_layers, "--layers");
  report::KeyStatsOptions opt;
  opt.n_c = n_c;
  opt.window = window;
  opt.attn_scale = meta.attn_scale;
  opt.attn_softcap = meta.attn_softcap;
  opt.top = report::parse_top_list(vm["top"].as<std::string>(), n_c);

  i64 n_eval = 0, n_window = 0;
  for (i64 p : meta.q_pos) {
    n_eval += p >= n_c;
    n_window += p >= n_c - window && p < n_c;
  }
  if (n_eval == 0 && n_window == 0)
    fail(trace_path, "/q_pos", "no stored query at or after n_c = " + std::to_string(n_c) + " nor in the window");

  folder = std::make_unique<OutputFolder>("kvsim analyze", out_dir, "summary.json");
  std::vector<report::HeadKeyStats> stats;
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
      auto s = report::key_stats_for_layer(data, meta.q_pos, opt);
      compute_s += sw.seconds();
      stats.insert(stats.end(), s.begin(), s.end());
      progress.advance();
    }
  }


  std::string command;
  for (const auto& a : args) command += (command.empty() ? "kvsim " : " ") + a;
  Json j = run_header(command, kernels::isa_name(kernels::active_isa()));
  j["analysis"] = "keydiff-premise";
  j["trace"] = trace_summary(meta, trace_path);
  j["protocol"] = {{"compression_point", cp},
                   {"n_c", static_cast<std::int64_t>(n_c)},
                   {"window", static_cast<std::int64_t>(window)},
                   {"n_eval_queries", static_cast<std::int64_t>(n_eval)},
                   {"n_window_queries", static_cast<std::int64_t>(n_window)},
                   {"layers", layers}};
  j["top"] = Json::array();
  for (const auto& t : opt.top) j["top"].push_back({{"top", t.text}, {"tokens", static_cast<std::int64_t>(t.tokens)}});
  // Means over every analysed head, per evaluation set.
  std::map<std::string, std::vector<const report::HeadKeyStats*>> by_eval;
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
  folder->publish({{"key_stats.csv", report::key_stats_csv(stats)},
                   {"key_recall.csv", report::key_recall_csv(stats, opt.top)},
                   {"summary.json", json_text(j)}},
                  report::kAnalyzeOutputs);

  // Short table on stdout: per layer and evaluation set, mean correlation and first recall.
  std::printf("%-6s %-8s %6s %10s %12s\n", "layer", "eval", "heads", "spearman", "recall@" );
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
    std::printf("%-6d %-8s %6d %10.4f %12.4f\n", k.first, k.second.c_str(), count[k], a.first / n, a.second / n);
  }
  std::printf("recall@ = top %s; files in %s\n", opt.top.empty() ? "-" : opt.top[0].text.c_str(), out_dir.c_str());
  return 0;
}

}  // namespace
KVSIM_COMMAND("analyze", "KeyDiff premise statistics (distinctiveness vs attention) from a trace", cmd_analyze);
}  // namespace kvsim::cli
