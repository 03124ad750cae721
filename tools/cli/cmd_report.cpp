// kvsim report: a self-contained HTML report (inline SVG plots) from replay, analyze and
// prefill output folders.
#include <filesystem>
#include <iostream>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "core/table_io.h"
#include "report/html_report.h"

namespace kvsim::cli {
namespace {

int cmd_report(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  po::options_description opts("kvsim report DIR [DIR ...] --out report.html [options]");
  opts.add_options()("help,h", "show this help")
      ("out,o", po::value<std::string>(), "HTML file to write (written atomically)")
      ("analyze", po::value<std::vector<std::string>>()->composing(), "a kvsim analyze --out folder (repeatable)")
      ("prefill", po::value<std::vector<std::string>>()->composing(), "a kvsim prefill --out folder (repeatable)")
      ("max-traces", po::value<int>()->default_value(8), "sweep folders: per-trace sections shown (all traces are in the "
                                                         "cross-trace summary)");
  po::options_description hidden;
  hidden.add_options()("dirs", po::value<std::vector<std::string>>()->composing(), "");
  po::options_description all;
  all.add(opts).add(hidden);
  const po::variables_map vm = parse_args(args, all, "dirs", -1);
  if (vm.count("help")) {
    std::cout << "Writes one HTML page with the header of each run (trace, command, timings), bound vs actual\n"
                 "perturbation, rule comparisons, CriticalKV head win rates, the Ada-KV allocation effect,\n"
                 "the KeyDiff premise (kvsim analyze folders) and CritiPrefill (kvsim prefill folders).\n"
                 "Positional folders may be replay, analyze, sweep or kvsim-closed-loop outputs; their kind is detected\n"
                 "from the files. A closed-loop folder gives offline perturbation against the model's behaviour after\n"
                 "a real eviction (rank correlations, KeyDiff simulated vs true block-wise), then its replay.\n"
                 "A sweep folder gives a cross-trace summary (mean and spread of each rule's perturbation and bound\n"
                 "tightness over the traces) and per-trace sections.\n\n"
              << opts;
    return 0;
  }
  if (!vm.count("out")) throw po::error("--out is required");
  const std::string out_path = vm["out"].as<std::string>();

  report::ReportInputs in;
  in.version = KVSIM_VERSION;
  for (const auto& a : args) in.command += (in.command.empty() ? "kvsim " : " ") + a;
  if (vm.count("dirs"))
    for (const auto& d : vm["dirs"].as<std::vector<std::string>>()) {
      if (report::is_sweep_output(d)) in.sweeps.push_back(report::load_sweep_output(d));
      else if (report::is_closed_loop_output(d)) in.closed_loops.push_back(report::load_closed_loop_output(d));
      else if (report::is_analyze_output(d)) in.analyses.push_back(report::load_analyze_output(d));
      else in.replays.push_back(report::load_replay_output(d));
    }
  if (vm.count("analyze"))
    for (const auto& d : vm["analyze"].as<std::vector<std::string>>()) in.analyses.push_back(report::load_analyze_output(d));
  if (vm.count("prefill"))
    for (const auto& d : vm["prefill"].as<std::vector<std::string>>()) in.prefills.push_back(report::load_prefill_output(d));
  in.max_sweep_sections = vm["max-traces"].as<int>();
  if (in.max_sweep_sections < 0) throw po::error("--max-traces must be >= 0");
  if (in.replays.empty() && in.analyses.empty() && in.prefills.empty() && in.sweeps.empty() &&
      in.closed_loops.empty())
    throw po::error("give at least one output folder");

  const std::filesystem::path parent = std::filesystem::path(out_path).parent_path();
  if (!parent.empty() && !std::filesystem::is_directory(parent)) fail(out_path, "", "folder does not exist");
  const std::string html = report::render_html_report(in);
  write_file_atomic(out_path, html);

  std::cout << "wrote " << out_path << " (" << html.size() / 1024 << " KiB): " << in.replays.size()
            << " replay, " << in.analyses.size() << " analyze, " << in.prefills.size() << " prefill, " << in.sweeps.size()
            << " sweep, " << in.closed_loops.size() << " closed-loop folder(s)\n";
  for (const auto& r : in.replays)
    std::cout << "  replay  " << r.dir << ": " << r.rules.size() << " rules x " << r.budgets.size() << " budgets, "
              << r.layers.size() << " layers, " << r.rows.size() << " rows\n";
  return 0;
}

}  // namespace
KVSIM_COMMAND("report", "write a self-contained HTML report from replay/analyze/prefill outputs", cmd_report);
}  // namespace kvsim::cli
