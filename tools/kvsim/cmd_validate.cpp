// kvsim validate: checks a trace against every rule of trace format v1.
#include <iostream>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "trace/crash_guard.h"
#include "trace/trace_validator.h"

namespace kvsim::cli {
namespace {

int cmd_validate(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  ValidateOptions vo;
  std::string path;
  po::options_description opts("kvsim validate TRACE [options]");
  opts.add_options()("help,h", "show this help")
      ("trace", po::value(&path), "trace file (HDF5, format v1)")
      ("window", po::value(&vo.window)->default_value(vo.window),
       "observation window: positions before the compression point whose queries must be stored")
      ("no-scan", "skip the NaN/Inf scan of every tensor (metadata and shapes only)");
  const po::variables_map vm = parse_args(args, opts, "trace");
  if (vm.count("help")) {
    std::cout << "Checks attributes, shapes, dtypes, positions, segments, spans, the observation window\n"
                 "and (streaming, layer by layer) every value for NaN/Inf. Prints one line per problem and\n"
                 "exits 1, or prints OK and exits 0.\n\n" << opts;
    return 0;
  }
  if (path.empty()) throw po::error("missing TRACE argument");
  if (vo.window < 0) throw po::error("--window must be >= 0");
  vo.scan_values = !vm.count("no-scan");
  CrashGuard guard("kvsim validate", path);  // a crash inside HDF5 means a corrupt file
  const auto problems = validate_trace(path, vo);
  for (const auto& p : problems) std::cout << p << "\n";
  if (problems.empty()) {
    std::cout << "OK " << path << "\n";
    return 0;
  }
  std::cerr << "kvsim validate: " << problems.size() << " problem" << (problems.size() == 1 ? "" : "s")
            << " in " << path << "\n";
  return 1;
}

}  // namespace
KVSIM_COMMAND("validate", "check a trace file against trace format v1", cmd_validate);
}  // namespace kvsim::cli
