// kvsim validate: checks a trace against every rule of the trace format (v1 or v2) and, with
// --check-o, that kvsim's full attention reproduces the model's own attention output.
#include <cstdio>
#include <iostream>

#include <boost/program_options.hpp>

#include "attention/output_check.h"
#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "trace/crash_guard.h"
#include "trace/trace_reader.h"
#include "trace/trace_validator.h"

namespace kvsim::cli {
namespace {

// Default tolerance on max_h,t ||o_kvsim - o||_2 / ||o||_2. float32 traces leave summation order
// only (~1e-5 seen). In 16-bit traces the rounding of q and k (~5e-4 / ~4e-3 relative) is
// amplified by the logits: the bundled float16 samples reproduce o to 2-7%.
double default_tolerance(StorageDtype d) {
  switch (d) {
    case StorageDtype::float32: return 1e-4;
    case StorageDtype::float16: return 1e-1;
    case StorageDtype::bfloat16: return 3e-1;
  }
  return 1e-4;
}

// One line per layer; returns the number of layers over the tolerance.
int check_outputs(const std::string& path, double tolerance) {
  TraceReader reader(path);
  const TraceMeta& meta = reader.meta();
  if (!meta.has_o) fail(path, "/layers/*/o", "--check-o needs the attention output o (dumped without --no-o)");
  const double tol = tolerance > 0 ? tolerance : default_tolerance(meta.dtype);
  LayerRequest req;
  req.o = true;
  req.o_proj = false;
  int bad = 0;
  for (int l = 0; l < meta.num_layers; ++l) {
    const OutputCheck c = check_attention_output(meta, reader.read_layer(l, req));
    const bool ok = c.max_rel_err <= tol;
    bad += !ok;
    std::printf("o layer %d: %lld queries, max rel err %.3g, max abs err %.3g (max |o| %.3g) %s\n", l,
                static_cast<long long>(c.n_queries), c.max_rel_err, c.max_abs_err, c.max_abs_o,
                ok ? "OK" : "EXCEEDS tolerance");
  }
  if (meta.dtype != StorageDtype::float32 && tolerance <= 0)
    std::printf("o: %s trace: the rounding of stored q and k dominates the error; a float32 dump checks to 1e-4\n",
                dtype_name(meta.dtype));
  std::fflush(stdout);
  if (bad)
    std::fprintf(stderr, "kvsim validate: %s: /layers/*/o: %d layer%s not reproduced by full attention within %.3g\n",
                 path.c_str(), bad, bad == 1 ? "" : "s", tol);
  return bad;
}

int cmd_validate(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  ValidateOptions vo;
  std::string path;
  double tolerance = 0;
  po::options_description opts("kvsim validate TRACE [options]");
  opts.add_options()("help,h", "show this help")
      ("trace", po::value(&path), "trace file (HDF5, format v1 or v2)")
      ("window", po::value(&vo.window)->default_value(vo.window),
       "observation window: positions before the compression point whose queries must be stored")
      ("no-scan", "skip the NaN/Inf scan of every tensor (metadata and shapes only)")
      ("check-o", "also replay full attention of every stored query with the replay engine and compare it "
                  "with the model's attention output o, layer by layer")
      ("o-tolerance", po::value(&tolerance)->default_value(0),
       "--check-o: largest allowed max_(h,t) ||o_kvsim - o||_2 / ||o||_2; 0 = by storage dtype "
       "(float32 1e-4, float16 0.1, bfloat16 0.3)");
  const po::variables_map vm = parse_args(args, opts, "trace");
  if (vm.count("help")) {
    std::cout << "Checks attributes, shapes, dtypes, positions, segments, spans, the observation window\n"
                 "and (streaming, layer by layer) every value for NaN/Inf. Prints one line per problem and\n"
                 "exits 1, or prints OK and exits 0.\n\n" << opts;
    return 0;
  }
  if (path.empty()) throw po::error("missing TRACE argument");
  if (vo.window < 0) throw po::error("--window must be >= 0");
  if (tolerance < 0) throw po::error("--o-tolerance must be >= 0");
  vo.scan_values = !vm.count("no-scan");
  CrashGuard guard("kvsim validate", path);  // a crash inside HDF5 means a corrupt file
  const auto problems = validate_trace(path, vo);
  for (const auto& p : problems) std::cout << p << "\n";
  if (!problems.empty()) {
    std::cerr << "kvsim validate: " << problems.size() << " problem" << (problems.size() == 1 ? "" : "s")
              << " in " << path << "\n";
    return 1;
  }
  if (vm.count("check-o") && check_outputs(path, tolerance) > 0) return 1;
  std::cout << "OK " << path << "\n";
  return 0;
}

}  // namespace
KVSIM_COMMAND("validate", "check a trace file against the trace format (v1 or v2)", cmd_validate);
}  // namespace kvsim::cli
