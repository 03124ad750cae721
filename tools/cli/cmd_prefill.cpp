// kvsim prefill: CritiPrefill segment-wise sparse prefill, simulated exactly on a trace (metrics,
// locality) or timed with the block-sparse attention kernel on synthetic layers (--bench).
#include <cmath>
#include <cstdio>
#include <iostream>
#include <sstream>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "core/output_folder.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "prefill/prefill_output.h"

namespace kvsim::cli {
namespace {

std::vector<i64> parse_lengths(const std::string& s) {
  std::vector<i64> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != item.size() || v < 1)
      throw boost::program_options::error("--lengths: '" + item + "' is not a positive integer");
    out.push_back(v);
  }
  if (out.empty()) throw boost::program_options::error("--lengths is empty");
  return out;
}

std::string joined(const std::vector<std::string>& args) {
  std::string s = "kvsim";
  for (const auto& a : args) s += " " + a;
  return s;
}

void print_bench_table(const std::vector<prefill::BenchRow>& rows) {
  std::printf("wall clock:\n%7s %9s %9s %8s %8s %8s %9s %9s %9s %10s\n", "n", "dense_s", "sparse_s", "est_s", "speedup",
              "ideal", "sp/ideal", "dense_GF", "sgemm_GF", "dense/blas");
  for (const auto& r : rows)
    std::printf("%7lld %9.3f %9.3f %8.3f %8.2f %8.2f %8.0f%% %9.1f %9.1f %9.0f%%\n", static_cast<long long>(r.n),
                r.dense_seconds, r.sparse_seconds, r.estimate_seconds, r.speedup, r.ideal_reduction,
                100 * r.speedup_over_ideal, r.dense_gflops, r.sgemm_gflops, 100 * r.dense_fraction_of_sgemm);
  std::printf("process CPU time (all threads; robust to other jobs):\n%7s %9s %9s %8s %9s %11s %11s %10s\n", "n",
              "dense_cpu", "sparse_cpu", "speedup", "sp/ideal", "dense_GF/cs", "sgemm_GF/cs", "dense/blas");
  for (const auto& r : rows)
    std::printf("%7lld %9.2f %10.2f %8.2f %8.0f%% %11.1f %11.1f %9.0f%%\n", static_cast<long long>(r.n),
                r.dense_cpu_seconds, r.sparse_cpu_seconds, r.speedup_cpu, 100 * r.speedup_cpu / r.ideal_reduction,
                r.dense_gflops_per_cpu_second, r.sgemm_gflops_per_cpu_second, 100 * r.dense_fraction_of_sgemm_cpu);
}

int cmd_prefill(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  prefill::PrefillConfig cfg;
  prefill::BenchOptions bench;
  std::string trace, out, fusion = "on", lengths = "8192,32768,65536", json;
  int anchors = 8;
  po::options_description opts("kvsim prefill TRACE --out DIR [options]  |  kvsim prefill --bench [options]");
  opts.add_options()("help,h", "show this help")("trace", po::value(&trace), "trace storing every prompt query")
      ("out,o", po::value(&out), "output folder (metrics.csv, locality.csv, summary.json)")
      ("segment", po::value(&cfg.segment)->default_value(cfg.segment), "query segment length S")
      ("block", po::value(&cfg.block)->default_value(cfg.block), "key block length bs (divides S)")
      ("budget", po::value(&cfg.budget)->default_value(cfg.budget), "past keys kept per segment (K = budget / bs blocks)")
      ("threshold", po::value(&cfg.threshold)->default_value(cfg.threshold), "segments starting before this run dense")
      ("layer-skip", po::value(&cfg.layer_skip)->default_value(cfg.layer_skip), "layers below this index run dense")
      ("fusion", po::value(&fusion)->default_value(fusion), "layer fusion: on | off | both")
      ("locality-anchors", po::value(&anchors)->default_value(anchors),
       "sampled anchor queries per layer and head for J(delta), 0 = skip locality")
      ("bench", "time the block-sparse vs dense attention kernel on synthetic layers")
      ("lengths", po::value(&lengths)->default_value(lengths), "--bench: prompt lengths")
      ("heads", po::value(&bench.num_heads)->default_value(bench.num_heads), "--bench: query heads")
      ("kv-heads", po::value(&bench.num_kv_heads)->default_value(bench.num_kv_heads), "--bench: KV heads")
      ("head-dim", po::value(&bench.head_dim)->default_value(bench.head_dim), "--bench: head dimension")
      ("repeats", po::value(&bench.repeats)->default_value(bench.repeats), "--bench: timed runs (best is kept)")
      ("json", po::value(&json), "--bench: also write the results as JSON");
  const po::variables_map vm = parse_args(args, opts, "trace");
  if (vm.count("help")) {
    std::cout << "Simulates CritiPrefill (segment-wise criticality, top-K key blocks per query segment, optional\n"
                 "layer fusion) exactly on a trace that stores every prompt query: retained mass, output\n"
                 "perturbation, block recall and attention-pair reduction per layer and head, and the locality\n"
                 "curve J(delta) of top-K block sets. With --bench, times the block-sparse causal attention\n"
                 "kernel (AVX-512, AVX2 or scalar, as dispatched) against the same kernel with every block\n"
                 "selected (dense), on random\n"
                 "Llama-8B-shaped layers, next to the ideal pair reduction and OpenBLAS throughput.\n\n"
              << opts;
    return 0;
  }
  if (fusion != "on" && fusion != "off" && fusion != "both")
    throw po::error("--fusion must be on, off or both (got '" + fusion + "')");
  cfg.validate();
  const std::string command = joined(args);

  if (vm.count("bench")) {
    if (!trace.empty()) throw po::error("--bench takes no TRACE");
    if (bench.num_kv_heads <= 0 || bench.num_heads <= 0 || bench.num_heads % bench.num_kv_heads != 0)
      throw po::error("--heads must be a positive multiple of --kv-heads");
    if (bench.head_dim <= 0) throw po::error("--head-dim must be positive");
    bench.lengths = parse_lengths(lengths);
    bench.cfg = cfg;
    const auto rows = prefill::run_bench(bench, [](const std::string& s) { std::cerr << "prefill bench: " << s << "\n"; });
    print_bench_table(rows);
    if (!json.empty()) write_file_atomic(json, prefill::bench_json(rows, bench, command));
    return 0;
  }
  if (trace.empty()) throw po::error("missing TRACE argument (or --bench)");
  if (out.empty()) throw po::error("missing --out DIR");
  prefill::PrefillRunOptions ro;
  ro.cfg = cfg;
  ro.fusion_on = fusion != "off";
  ro.fusion_off = fusion != "on";
  ro.locality_anchors = anchors;
  const auto res = prefill::run_prefill(trace, ro, out, command);
  std::cout << prefill::run_table(res) << std::flush;
  std::printf("wrote %s/{metrics.csv,locality.csv,locality_shuffled.csv,summary.json} in %.2f s, peak RSS %.1f MiB\n", out.c_str(),
              res.total_seconds, static_cast<double>(peak_rss_bytes()) / (1024.0 * 1024.0));
  return 0;
}

}  // namespace

KVSIM_COMMAND("prefill", "CritiPrefill sparse prefill: exact simulation on a trace, or --bench the kernel", cmd_prefill);

}  // namespace kvsim::cli
