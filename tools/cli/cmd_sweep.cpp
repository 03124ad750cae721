// kvsim sweep: a study over many traces (lib/sweep/sweep.h). One process here; kvsim-mpi runs
// the same command under mpirun / srun with the units spread over the ranks.
#include <fstream>
#include <iostream>

#include <boost/program_options.hpp>

#include "attention/norm_cache.h"
#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "sweep/sweep.h"
#include "study_config.h"
#include "sweep_comm.h"

namespace kvsim::cli {
namespace {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::size_t b = 0;
  for (;;) {
    const std::size_t e = text.find(',', b);
    std::string part = text.substr(b, e == std::string::npos ? std::string::npos : e - b);
    if (!part.empty()) out.push_back(part);
    if (e == std::string::npos) break;
    b = e + 1;
  }
  return out;
}

std::vector<std::string> read_trace_list(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, "", "--trace-list: cannot read the file");
  std::vector<std::string> out;
  for (std::string line; std::getline(in, line);) {
    const auto a = line.find_first_not_of(" \t\r"), b = line.find_last_not_of(" \t\r");
    if (a == std::string::npos || line[a] == '#') continue;  // blank lines and comments
    out.push_back(line.substr(a, b - a + 1));
  }
  return out;
}

int cmd_sweep(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  SweepOptions so;
  ReplayOptions& ro = so.replay;
  std::string traces, trace_list, cp = "agnostic", eval = "queries", nu = "exact", nu_cache, config;
  std::string protocol = "oneshot", decode_start = "full", admission = "evict";
  i64 every = 0;
  po::options_description opts("kvsim sweep (--traces A.h5,B.h5 | --trace-list FILE) --rules SPECS --budgets LIST --out DIR [options]");
  opts.add_options()("help,h", "show this help")
      ("config", po::value(&config),
       "study file (TOML): every key an option below (traces = [...], rules = [...], budgets = [...], ...); "
       "the command line overrides it; recorded in sweep.json")
      ("traces", po::value(&traces), "comma-separated trace files")
      ("trace-list", po::value(&trace_list), "file with one trace path per line (# comments)")
      ("rules", po::value(&ro.rules), "rule specs separated by ';' (as kvsim replay)")
      ("budgets", po::value(&ro.budgets), "comma-separated budgets (as kvsim replay)")
      ("out,o", po::value(&so.out_dir), "output folder: one replay folder per trace, sweep_metrics.csv, sweep.json")
      ("layers", po::value(&ro.layers)->default_value(ro.layers), "layers to replay in every trace")
      ("heads", po::value(&ro.heads)->default_value(ro.heads), "query heads written as head rows")
      ("compression-point", po::value(&cp)->default_value(cp), "agnostic | aware")
      ("window", po::value(&ro.protocol.window)->default_value(ro.protocol.window), "observation window w")
      ("eval", po::value(&eval)->default_value(eval), "queries | window | both")
      ("protocol", po::value(&protocol)->default_value(protocol), "oneshot | decode (as kvsim replay)")
      ("every", po::value(&every)->default_value(every), "decode: positions between compressions")
      ("decode-start", po::value(&decode_start)->default_value(decode_start), "decode: full | compressed")
      ("admission", po::value(&admission)->default_value(admission), "decode: evict | append-only")
      ("nu", po::value(&nu)->default_value(nu), "exact | upper")
      ("nu-cache", po::value(&nu_cache), "value-norm cache folder, or off (default: DIR/nu-cache, shared by every "
                                         "rank when DIR is on a shared file system)")
      ("per-query", "also write metrics_per_query.csv per trace")
      ("layers-per-unit", po::value(&so.layers_per_unit)->default_value(so.layers_per_unit),
       "layers per work unit: a trace with more layers spreads over several processes")
      ("resume", "reuse the finished units found in DIR (same trace files and options)")
      ("force", "discard the units found in DIR first (without --resume they are recomputed anyway)")
      ("threads", po::value(&ro.threads)->default_value(0),
       "OpenMP threads per process (0: OMP_NUM_THREADS, or the cores divided by the processes on the node)");
  po::variables_map vm = parse_args(args, opts);
  if (!config.empty()) {  // the file fills what the command line left unset
    const StudyConfig study = read_study_config(config, opts);
    so.config = study.json;
    po::store(po::command_line_parser(study.args).options(opts).run(), vm);
    po::notify(vm);
  }
  if (vm.count("help")) {
    std::cout << "Replays every trace of a study through the same rules and budgets. Work units are (trace,\n"
                 "layer range); under kvsim-mpi (mpirun -n N kvsim-mpi sweep ...) the ranks take them from a\n"
                 "shared counter, so fast and slow units balance, and each rank reads only its units' layers.\n"
                 "Every unit is written atomically and --resume skips finished ones. The per-trace folders\n"
                 "hold exactly what kvsim replay writes for that trace, whatever the number of processes.\n"
                 "Like kvsim replay, a sweep into a folder that holds an earlier one replaces its results\n"
                 "once the new ones are complete; another run writing the folder makes it fail at once.\n\n"
              << opts;
    return 0;
  }
  if (vm.count("traces") == vm.count("trace-list")) throw po::error("give exactly one of --traces and --trace-list");
  so.traces = vm.count("traces") ? split_list(traces) : read_trace_list(trace_list);
  if (ro.rules.empty()) throw po::error("missing --rules");
  if (ro.budgets.empty()) throw po::error("missing --budgets");
  if (so.out_dir.empty()) throw po::error("missing --out DIR");
  if (ro.threads < 0) throw po::error("--threads must be >= 0");
  if (so.layers_per_unit < 1) throw po::error("--layers-per-unit must be >= 1");
  try {
    ro.nu = parse_bound_norm(nu);
  } catch (const Error& e) {
    throw po::error(e.what());
  }
  ro.nu_cache_dir = !vm.count("nu-cache") ? so.out_dir + "/nu-cache" : nu_cache == "off" ? "" : nu_cache;
  cli::set_protocol_modes(ro.protocol, cp, eval, protocol, every, decode_start, admission);
  ro.per_query = vm.count("per-query") > 0;
  so.resume = vm.count("resume") > 0;
  so.force = vm.count("force") > 0;
  if (so.resume && so.force) throw po::error("--resume and --force exclude each other");
  so.command = "kvsim";
  for (const auto& a : args) so.command += " " + a;
  auto comm = make_sweep_comm();
  if (ro.threads == 0) ro.threads = default_threads_per_rank(*comm);
  return run_sweep(so, *comm, std::cout);
}

}  // namespace
KVSIM_COMMAND("sweep", "replay many traces (a study) in work units, on one process or MPI ranks; --resume", cmd_sweep);
}  // namespace kvsim::cli
