// kvsim analyze: statistics that need the trace itself (spec section 4.3, KeyDiff premise):
// Spearman correlation between key distinctiveness and attention, top-N recall, attention-mass
// concentration, per (layer, query head). Writes key_stats.csv, key_recall.csv, summary.json.
#include <iostream>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "report/analyze_run.h"

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
  report::AnalyzeOptions o;
  o.trace_path = vm["trace"].as<std::string>();
  o.out_dir = vm["out"].as<std::string>();
  o.compression_point = vm["compression-point"].as<std::string>();
  o.window = vm["window"].as<long long>();
  o.layers = vm["layers"].as<std::string>();
  o.top = vm["top"].as<std::string>();
  for (const auto& a : args) o.command += (o.command.empty() ? "kvsim " : " ") + a;
  std::cout << report::run_analysis(o).table;
  return 0;
}

}  // namespace
KVSIM_COMMAND("analyze", "KeyDiff premise statistics (distinctiveness vs attention) from a trace", cmd_analyze);
}  // namespace kvsim::cli
