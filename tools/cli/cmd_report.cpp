// kvsim report: a self-contained HTML report (inline SVG plots) from replay, analyze and
// prefill output folders.
#include <filesystem>
#include <iostream>
#include <set>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "core/table_io.h"
#include "report/figure_files.h"
#include "report/html_report.h"
#include "report/report_exports.h"

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
                                                         "cross-trace summary)")
      ("figures", po::value<std::string>(), "also write every figure into this folder, one file per figure and format, "
                                            "named after its section (SECTION-N-title.svg/.png/.pdf)")
      ("tables", po::value<std::string>(), "also write every table into this folder (TABLE_ID.md / .tex / .csv)")
      ("format", po::value<std::string>()->default_value("svg,md,tex,csv"),
       "file formats: svg, png (300 dpi) and pdf for figures (png and pdf through rsvg-convert); md, tex "
       "(booktabs) and csv for tables")
      ("digits", po::value<int>()->default_value(4), "significant digits of the md and tex tables (csv: full precision)");
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
  // --figures / --tables: the same tables and figures the page shows, also as files.
  const std::string figures = vm.count("figures") ? vm["figures"].as<std::string>() : "",
                    tables = vm.count("tables") ? vm["tables"].as<std::string>() : "";
  const int digits = vm["digits"].as<int>();
  if (digits < 1 || digits > 17) throw po::error("--digits must be in 1..17");
  std::set<std::string> formats;
  for (std::size_t b = 0, e; b <= vm["format"].as<std::string>().size(); b = e + 1) {
    const std::string& f = vm["format"].as<std::string>();
    e = f.find(',', b);
    if (e == std::string::npos) e = f.size();
    const std::string one = f.substr(b, e - b);
    if (one != "svg" && one != "png" && one != "pdf" && one != "md" && one != "tex" && one != "csv")
      throw po::error("--format: unknown format '" + one + "'");
    formats.insert(one);
  }
  // PNG and PDF are converted from the SVG by rsvg-convert: missing, it stops the run before
  // anything is written.
  std::string converter;
  if (!figures.empty() && (formats.count("png") || formats.count("pdf"))) {
    converter = report::svg_converter();
    if (converter.empty())
      throw po::error("--format png/pdf needs rsvg-convert (Debian package librsvg2-bin; bash tools/install-deps.sh "
                      "installs it), or use --format svg");
  }
  report::ReportExports exports;
  std::string html;
  {
    report::ExportScope scope(figures.empty() && tables.empty() ? nullptr : &exports);
    html = report::render_html_report(in);
  }
  // Every file complete before the page: a failed write leaves no page that claims them.
  const auto write_all = [&](const std::string& dir, const std::vector<std::pair<std::string, std::string>>& files) {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) fail(dir, "", "cannot create: " + ec.message());
    for (const auto& [name, text] : files) write_file_atomic(dir + "/" + name, text);
  };
  std::size_t n_figures = 0, n_tables = 0;
  if (!figures.empty()) {
    // The SVG files are the source of the PNG/PDF ones; without svg in --format they are
    // temporary (hidden names, removed after the conversion).
    const bool keep_svg = formats.count("svg") > 0;
    std::vector<std::pair<std::string, std::string>> files;
    const auto svg_name = [&](const report::ExportedFigure& f) { return (keep_svg ? "" : ".svg-source-") + f.name + ".svg"; };
    for (const auto& f : exports.figures)
      files.push_back({svg_name(f), "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + f.svg + "\n"});
    write_all(figures, files);
    struct RemoveSources {
      std::vector<std::string> paths;
      ~RemoveSources() {
        std::error_code ec;
        for (const auto& p : paths) std::filesystem::remove(p, ec);
      }
    } sources;
    if (!keep_svg)
      for (const auto& f : exports.figures) sources.paths.push_back(figures + "/" + svg_name(f));
    for (const char* format : {"png", "pdf"})
      if (formats.count(format))
        for (const auto& f : exports.figures)
          report::convert_svg(converter, figures + "/" + svg_name(f), figures + "/" + f.name + "." + format, format);
    n_figures = exports.figures.size();
  }
  if (!tables.empty()) {
    std::vector<std::pair<std::string, std::string>> files;
    for (const auto& t : exports.tables) {
      if (formats.count("md")) files.push_back({t.name + ".md", report::table_markdown(t, digits)});
      if (formats.count("tex")) files.push_back({t.name + ".tex", report::table_latex(t, digits)});
      if (formats.count("csv")) files.push_back({t.name + ".csv", report::table_csv(t)});
    }
    write_all(tables, files);
    n_tables = exports.tables.size();
  }
  write_file_atomic(out_path, html);
  if (!figures.empty()) {
    std::string kinds;
    for (const char* f : {"svg", "png", "pdf"})
      if (formats.count(f)) kinds += (kinds.empty() ? "" : ", ") + std::string(f);
    std::cout << "wrote " << n_figures << " figure(s) into " << figures << " (" << (kinds.empty() ? "no figure format" : kinds)
              << ")\n";
  }
  if (!tables.empty()) std::cout << "wrote " << n_tables << " table(s) into " << tables << "\n";

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
