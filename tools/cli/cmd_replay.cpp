// kvsim replay: replays a trace through selection rules and budgets (replay/replay.h).
#include <iostream>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "attention/norm_cache.h"
#include "core/error.h"
#include "replay/replay.h"

namespace kvsim::cli {
namespace {

int cmd_replay(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  ReplayOptions ro;
  std::string cp = "agnostic", eval = "queries", nu = "exact", nu_cache = default_norm_cache_dir();
  std::string protocol = "oneshot", decode_start = "full", admission = "evict";
  i64 every = 0;
  if (nu_cache.empty()) nu_cache = "off";
  po::options_description opts("kvsim replay TRACE --rules SPECS --budgets LIST --out DIR [options]");
  opts.add_options()("help,h", "show this help")
      ("trace", po::value(&ro.trace_path), "trace file (HDF5, format v1 or v2)")
      ("rules", po::value(&ro.rules), "rule specs separated by ';' (\"default\" and \"all\" are rule sets; see kvsim rules)")
      ("budgets", po::value(&ro.budgets), "comma-separated budgets: fraction of n_c (0.2, 20%) or tokens per head (512)")
      ("out,o", po::value(&ro.out_dir), "output folder: metrics.csv, summary.json, ...")
      ("layers", po::value(&ro.layers)->default_value(ro.layers), "layers to replay, e.g. 0-3,31")
      ("heads", po::value(&ro.heads)->default_value(ro.heads),
       "query heads written as head rows (layer rows always use every head)")
      ("compression-point", po::value(&cp)->default_value(cp),
       "agnostic (end of context, default) | aware (prefill_len: context + question)")
      ("window", po::value(&ro.protocol.window)->default_value(ro.protocol.window),
       "observation window w: queries n_c-w .. n_c-1")
      ("eval", po::value(&eval)->default_value(eval),
       "queries (positions >= n_c) | window (observation window, in-sample) | both")
      ("protocol", po::value(&protocol)->default_value(protocol),
       "oneshot (compress once at n_c) | decode (also every --every positions while generating)")
      ("every", po::value(&every)->default_value(every), "decode: positions between compressions (kvpress compression_interval)")
      ("decode-start", po::value(&decode_start)->default_value(decode_start),
       "decode: the cache at n_c is full (kvpress DecodingPress) | compressed (PrefillDecodingPress)")
      ("admission", po::value(&admission)->default_value(admission),
       "decode: evict (each compression may drop any cached token) | append-only (nothing cached leaves; new tokens "
       "enter where the budget's cut keeps them, kvpress #257)")
      ("nu", po::value(&nu)->default_value(nu),
       "value norm of the bounds: exact (||v W_o||_1) | upper (sum |v||W_o|, cheaper, looser but valid)")
      ("nu-cache", po::value(&nu_cache)->default_value(nu_cache),
       "folder caching exact value norms between runs (keyed by the V and W_o bytes), or off; "
       "default $KVSIM_CACHE_DIR, else $XDG_CACHE_HOME/kvsim, else ~/.cache/kvsim")
      ("per-query", "also write metrics_per_query.csv")
      ("save-selection", "also write selection.h5 (kept masks)")
      ("threads", po::value(&ro.threads)->default_value(0), "OpenMP threads (0: OMP_NUM_THREADS or all cores)");
  const po::variables_map vm = parse_args(args, opts, "trace");
  if (vm.count("help")) {
    std::cout << "Replays a trace one layer at a time: every rule selects once per layer for all budgets;\n"
                 "for every selection the exact output perturbation against full attention (per head and\n"
                 "layer, through o_proj when the trace has it) and the Ada-KV / CriticalKV bounds are\n"
                 "measured on the evaluation queries. Outputs are written atomically.\n"
                 "Exact value norms ||v_j W_o^h|| (the costliest step of a long trace) are cached on disk\n"
                 "(--nu-cache), so replaying the same trace again with other rules or budgets reuses them.\n\n"
              << opts;
    return 0;
  }
  if (ro.trace_path.empty()) throw po::error("missing TRACE argument");
  if (ro.rules.empty()) throw po::error("missing --rules");
  if (ro.budgets.empty()) throw po::error("missing --budgets");
  if (ro.out_dir.empty()) throw po::error("missing --out DIR");
  if (ro.threads < 0) throw po::error("--threads must be >= 0");
  try {
    ro.nu = parse_bound_norm(nu);
  } catch (const Error& e) {
    throw po::error(e.what());
  }
  if (nu_cache.empty()) throw po::error("--nu-cache needs a folder or off");
  ro.nu_cache_dir = nu_cache == "off" ? "" : nu_cache;
  cli::set_protocol_modes(ro.protocol, cp, eval, protocol, every, decode_start, admission);
  ro.per_query = vm.count("per-query") > 0;
  ro.save_selection = vm.count("save-selection") > 0;
  ro.command = "kvsim";
  for (const auto& a : args) ro.command += " " + a;
  run_replay(ro, std::cout);
  return 0;
}

}  // namespace
KVSIM_COMMAND("replay", "replay a trace through selection rules and budgets; perturbation and bounds", cmd_replay);
}  // namespace kvsim::cli
