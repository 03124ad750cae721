// kvsim synth: writes a synthetic trace with realistic attention structure (see trace/synthetic.h).
#include <filesystem>
#include <iostream>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/sysinfo.h"
#include "trace/synthetic.h"

namespace kvsim::cli {
namespace {

StorageDtype parse_dtype(const std::string& s) {
  if (s == "float32") return StorageDtype::float32;
  if (s == "float16") return StorageDtype::float16;
  if (s == "bfloat16") return StorageDtype::bfloat16;
  throw boost::program_options::error("--dtype must be float32, float16 or bfloat16 (got '" + s + "')");
}

int cmd_synth(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  SynthOptions so;
  std::string out, dtype = "float32", queries = "window", rope = "half";
  po::options_description opts("kvsim synth --out TRACE [options]");
  opts.add_options()("help,h", "show this help")
      ("out,o", po::value(&out), "output trace file (.h5)")
      ("layers", po::value(&so.num_layers)->default_value(so.num_layers), "number of layers")
      ("heads", po::value(&so.num_heads)->default_value(so.num_heads), "query heads")
      ("kv-heads", po::value(&so.num_kv_heads)->default_value(so.num_kv_heads), "KV heads (divides --heads)")
      ("head-dim", po::value(&so.head_dim)->default_value(so.head_dim), "head dimension (even)")
      ("hidden", po::value(&so.hidden_size)->default_value(so.hidden_size), "hidden size (rows of o_proj)")
      ("rope-theta", po::value(&so.rope_theta)->default_value(so.rope_theta), "RoPE base")
      ("rope-style", po::value(&rope)->default_value(rope), "half | interleaved")
      ("seq-len", po::value(&so.seq_len)->default_value(so.seq_len), "total positions: context + question + generated")
      ("question-len", po::value(&so.question_len)->default_value(so.question_len), "question positions")
      ("gen-len", po::value(&so.gen_len)->default_value(so.gen_len), "generated positions")
      ("queries", po::value(&queries)->default_value(queries),
       "stored queries: window (last --window context positions + question + generated) | all")
      ("window", po::value(&so.window)->default_value(so.window), "observation window stored in --queries window")
      ("needle-len", po::value(&so.needle_len)->default_value(so.needle_len), "planted needle length (0: none)")
      ("no-o-proj", "do not store o_proj")
      ("dtype", po::value(&dtype)->default_value(dtype), "storage: float32 | float16 | bfloat16")
      ("gzip", "gzip + shuffle compression")
      ("seed", po::value(&so.seed)->default_value(so.seed), "random seed (output is a pure function of it)");
  const po::variables_map vm = parse_args(args, opts);
  if (vm.count("help")) {
    std::cout << "Writes a synthetic trace (default shape: Llama-3.1-8B) with attention sinks, local recency,\n"
                 "heavy hitters, a needle span (/spans/needle) retrieved by some heads, outlier key channels\n"
                 "and heterogeneous value norms. Deterministic from --seed, whatever the thread count.\n\n"
              << opts;
    return 0;
  }
  if (out.empty()) throw po::error("missing --out TRACE");
  if (queries != "window" && queries != "all") throw po::error("--queries must be window or all");
  if (rope != "half" && rope != "interleaved") throw po::error("--rope-style must be half or interleaved");
  so.all_queries = queries == "all";
  so.rope_style = rope == "half" ? RopeStyle::half : RopeStyle::interleaved;
  so.o_proj = !vm.count("no-o-proj");
  WriteOptions wo;
  wo.dtype = parse_dtype(dtype);
  wo.gzip = vm.count("gzip") > 0;
  try {
    check_synth_options(so);
  } catch (const Error& e) {  // a bad option value is a usage error (exit 2)
    throw po::error(e.what());
  }

  Stopwatch clock;
  {
    Progress progress("synth " + out, so.num_layers);
    write_synthetic_trace(out, so, wo, [&](int) { progress.advance(); });
  }
  const double secs = clock.seconds();
  const double mib = static_cast<double>(std::filesystem::file_size(out)) / (1 << 20);
  std::printf("wrote %s: %d layers, %d heads / %d KV heads x %d, S = %lld, %s%s, %.1f MiB in %.2f s (%.0f MiB/s)\n",
              out.c_str(), so.num_layers, so.num_heads, so.num_kv_heads, so.head_dim,
              static_cast<long long>(so.seq_len), dtype.c_str(), wo.gzip ? " gzip" : "", mib, secs, mib / secs);
  return 0;
}

}  // namespace
KVSIM_COMMAND("synth", "write a synthetic trace with realistic attention structure", cmd_synth);
}  // namespace kvsim::cli
