// kvsim bench: times the replay core on synthetic Llama-8B-shaped layers generated in memory
// (32 heads, 8 KV heads, head_dim 128, hidden 4096, 64 evaluation queries) and compares it, in
// the same run, with the machine's FMA peak, OpenBLAS sgemm (on the same shapes and at its best),
// torch (its bmm on the core's shapes and a torch replay of the same selections) and numpy.
// The measurements themselves are in lib/replay/replay_bench.h; this file runs and prints them.
#include <omp.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "cli_args.h"
#include "command.h"
#include "core/blas_kernels.h"
#include "core/error.h"
#include "core/json.h"
#include "core/script_json.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "kernels/fma_peak.h"
#include "kernels/isa.h"
#include "kernels/kernel_bench.h"
#include "kernels/kernels.h"
#include "replay/replay_bench.h"
#include "replay/torch_bench.h"

namespace kvsim::cli {
namespace {

using namespace bench;

struct NumpyResult {
  double seconds = NAN, nu_per_head_s = NAN, metrics_s = NAN;
  std::string blas, error;
};

// tools/bench_numpy.py: the attention core; with `full`, also exact nu (4 heads) and the metrics
// of one selection, the same work kvsim's columns time.
NumpyResult run_numpy(i64 S, bool full) {
  NumpyResult r;
  const std::string cmd = std::string("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=") +
                          std::to_string(max_threads()) + " " KVSIM_PYTHON " " KVSIM_SOURCE_DIR
                          "/tools/bench_numpy.py --seq-len " + std::to_string(S) +
                          (full ? " --nu-heads 4 --metrics" : "");
  const ScriptJson got = run_json_script(cmd, "bench_numpy.py", "seconds");
  if (!got.error.empty()) {
    r.error = got.error;
    return r;
  }
  const Json& j = got.json;
  const auto num = [&](const char* key) { return j.contains(key) && j[key].is_number() ? j[key].get<double>() : NAN; };
  r.seconds = num("seconds");
  r.nu_per_head_s = num("nu_exact_seconds_per_head");
  r.metrics_s = num("metrics_seconds");
  if (j.contains("blas") && j["blas"].is_string()) r.blas = j["blas"].get<std::string>();
  return r;
}

// The library's timings of one length plus the numpy baseline and the peak RSS after it.
struct LengthResult : LengthTiming {
  double numpy_s = NAN, numpy_nu_s = NAN, numpy_metrics_s = NAN;
  std::int64_t rss = 0;  // bytes
};

int cmd_bench(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  std::string json_path, lengths_text = "4096,16384,32768,131072";
  po::options_description opts("kvsim bench [options]");
  opts.add_options()("help,h", "show this help")
      ("json", po::value(&json_path), "also write the results as JSON to this file")
      ("lengths", po::value(&lengths_text)->default_value(lengths_text), "sequence lengths (tokens)")
      ("quick", "short run: 4096,16384 only, one repetition, no full-replay measurement")
      ("no-numpy", "skip the numpy baseline")
      ("no-torch", "skip the torch anchors (torch's bmm and a torch replay of the same selections)")
      ("no-replay", "skip the full-replay measurement")
      ("no-kernels", "skip the per-kernel scalar vs SIMD table");
  const po::variables_map vm = parse_args(args, opts);
  if (vm.count("help")) {
    std::cout << "Times the replay core on synthetic Llama-8B-shaped layers (no disk): attention of 64\n"
                 "evaluation queries, projected value norms, perturbation metrics, and one layer of a full\n"
                 "replay (6 rules x 5 budgets), against in-run anchors: the FMA peak, OpenBLAS sgemm, torch and numpy.\n\n" << opts;
    return 0;
  }
  const bool quick = vm.count("quick") > 0;
  if (quick && vm["lengths"].defaulted()) lengths_text = "4096,16384";
  std::vector<i64> lengths;
  {
    std::stringstream ss(lengths_text);
    std::string tok;
    while (std::getline(ss, tok, ',')) {
      char* end = nullptr;
      errno = 0;
      const long long v = std::strtoll(tok.c_str(), &end, 10);
      // Above 2^20 tokens one synthetic layer alone needs more than ~16 GiB.
      if (tok.empty() || !end || *end || errno == ERANGE || v < 2 * (kEval + kWindow) || v > (1 << 20))
        throw po::error("--lengths: bad length '" + tok + "' (a whole number of tokens from " +
                        std::to_string(2 * (kEval + kWindow)) + " to 1048576)");
      lengths.push_back(v);
    }
  }
  const int threads = max_threads(), reps = quick ? 1 : 2;
  double load[1] = {NAN};
  getloadavg(load, 1);
  std::printf("kvsim bench: isa %s, %d threads, shape H=%d Hkv=%d d=%d D=%d, %d eval queries, load average %.1f\n",
              kernels::isa_name(kernels::active_isa()), threads, kHeads, kKvHeads, kDim, kHidden, kEval, load[0]);
  const BlasInfo blas = blas_info();
  std::printf("BLAS: %s, core %s (chosen by %s%s), %s threading\n", blas.config.c_str(), blas.core.c_str(),
              blas.chosen_by.c_str(), blas.corrected_from.empty() ? "" : (", OpenBLAS had picked " + blas.corrected_from).c_str(),
              blas.threading.c_str());

  {
    const BlasThreading bt = probe_blas_threading();
    const double outside = bt.outside_seconds, inside = bt.inside_seconds;
    // OpenBLAS's OpenMP build returns 1 from num_cpu_avail() when omp_in_parallel() (common_thread.h),
    // so the ratio is ~threads on an idle machine; on a loaded one it shrinks.
    std::printf("BLAS threading: sgemm 1024^3 outside a parallel region %.1f ms, alone on thread 0 of a 2-thread "
                "region %.1f ms (ratio %.2f; ~%d expected on an idle machine: BLAS is single-threaded inside)\n",
                outside * 1e3, inside * 1e3, inside / outside, std::min(2, max_threads()));
  }

  // The anchors every ratio below is read against: the machine's FMA peak and the best sgemm.
  const kernels::FmaPeak peak = kernels::measure_fma_peak(threads);
  const double sgemm_best = best_sgemm_gflops();
  std::printf("anchors: FP32 FMA peak %.1f GFLOP/s per core, %.1f on %d threads (%d-lane FMA loop); best sgemm "
              "(2048^3) %.1f GFLOP/s = %.2f of peak\n",
              peak.gflops_per_thread, peak.gflops_all, peak.threads, peak.lanes, sgemm_best, sgemm_best / peak.gflops_all);

  std::vector<LengthResult> results;
  std::string numpy_blas;
  for (i64 S : lengths) {
    LengthResult r;
    static_cast<LengthTiming&>(r) = time_length(S, threads, reps);
    if (!vm.count("no-numpy") && !(quick && S > 16384)) {
      const auto np = run_numpy(S, S <= 32768);
      if (!np.error.empty()) std::printf("numpy baseline: %s\n", np.error.c_str());
      r.numpy_s = np.seconds;
      r.numpy_nu_s = np.nu_per_head_s * kHeads;
      r.numpy_metrics_s = np.metrics_s;
      if (!np.blas.empty()) numpy_blas = np.blas;
    }
    r.rss = peak_rss_bytes();
    results.push_back(r);
  }

  std::printf("\n%8s %10s %9s %9s %10s %7s %9s %8s %8s %10s %10s %10s %10s %9s %9s\n", "S", "core s", "cpu/thr s", "GFLOP/s",
              "sgemm s", "ratio", "numpy s", "x numpy", "1->2 thr", "ns/token", "nu exact", "nu upper",
              "metrics/sel", "probs MiB", "peak RSS");
  for (const auto& r : results) {
    std::printf("%8lld %10.4f %9.4f %9.1f %10.4f %7.2f %9.3f %8.1f %8.2f %10.1f %9.2fs %9.4fs %10.4fs %9.0f %7.2fGiB\n",
                static_cast<long long>(r.S), r.core_s, r.core_cpu_s, r.flops() / r.core_s * 1e-9, r.sgemm_s, r.sgemm_s / r.core_s,
                r.numpy_s, r.numpy_s / r.core_s, r.core1_s / r.core_s, r.core_s / double(r.S) * 1e9,
                r.nu_exact_s, r.nu_upper_s, r.metrics_s, double(r.prob_tiles_peak_bytes) / double(1 << 20),
                double(r.rss) / double(1 << 30));
  }
  std::printf("cpu/thr = process CPU seconds / threads (idle-machine estimate); ");
  std::printf("ratio = sgemm time / core time (attention core throughput as a share of in-run sgemm on the same\n"
              "shapes); ns/token = core time per token of context (flat = linear growth in seq_len);\n"
              "probs MiB = attention probabilities alive at once (KV-group tiles, one per thread);\n"
              "nu exact = ||v W_o||_1 for all 32 heads (%s); numpy BLAS: %s\n",
              lengths.back() > 32768 ? "measured on 4 heads and scaled above 32K" : "measured",
              numpy_blas.empty() ? "not run" : numpy_blas.c_str());

  std::printf("\nvs numpy, same work (numpy: vectorised float32 on the same OpenBLAS; nu on 4 heads x 8):\n"
              "%8s %12s %12s %8s %12s %12s %8s %12s %12s %8s\n", "S", "core s", "numpy", "x", "nu exact s", "numpy",
              "x", "metrics/sel", "numpy", "x");
  for (const auto& r : results)
    std::printf("%8lld %12.4f %12.4f %8.1f %12.3f %12.3f %8.1f %12.4f %12.4f %8.1f\n", static_cast<long long>(r.S),
                r.core_s, r.numpy_s, r.numpy_s / r.core_s, r.nu_exact_s, r.numpy_nu_s, r.numpy_nu_s / r.nu_exact_s,
                r.metrics_s, r.numpy_metrics_s, r.numpy_metrics_s / r.metrics_s);

  // torch on the same layer and selections (the reference length: 32K when measured).
  TorchAnchor torch;
  const LengthResult* anchor_len = &results.front();  // the longest up to 32K (torch holds S x n_q x 3)
  for (const auto& r : results)
    if (r.S <= 32768 && r.S > anchor_len->S) anchor_len = &r;
  if (vm.count("no-torch")) {
    torch.error = "skipped (--no-torch)";
  } else {
    try {
      torch = run_torch_anchor(make_layer(anchor_len->S), threads, reps, KVSIM_PYTHON,
                               KVSIM_SOURCE_DIR "/tools/bench_torch.py");
    } catch (const Error& e) {
      torch.error = e.what();
    }
  }
  if (torch.error.empty()) {
    std::printf("\nvs torch %s (%s, %d threads), S=%lld, the same layer:\n"
                "  attention core: torch bmm alone %.4f s, torch core %.4f s, kvsim core %.4f s: "
                "core_vs_torch_bmm %.2f (>1: kvsim faster)\n"
                "  replay of %d selections (%s at %s; core + metrics, selection excluded): torch %.3f s, "
                "kvsim %.3f s: %.2fx; torch's rows vs kvsim's: L1 %.1e, F %.1e (max relative difference)\n",
                torch.torch_version.c_str(), torch.blas.c_str(), threads, static_cast<long long>(anchor_len->S),
                torch.torch_bmm_s, torch.torch_core_s, anchor_len->core_s, torch.torch_bmm_s / anchor_len->core_s,
                torch.selections, kTorchAnchorRules, kTorchAnchorBudgets, torch.torch_replay_s, torch.kvsim_replay_s,
                torch.torch_replay_s / torch.kvsim_replay_s, torch.max_rel_diff_l1, torch.max_rel_diff_F);
  } else {
    std::printf("\ntorch anchors not measured: %s\n", torch.error.c_str());
  }
  std::printf("metrics per selection vs their GEMM floor at the best sgemm rate (one 20%% selection alone; "
              "in a batch of 5 nested budgets 10-50%%, as a replay measures a rule):");
  for (const auto& r : results)
    std::printf(" S=%lld %.2fx, %.2fx", static_cast<long long>(r.S),
                r.metrics_s / (r.metrics_floor_flops / (sgemm_best * 1e9)),
                r.metrics_batch_s / (r.metrics_batch_floor_flops / (sgemm_best * 1e9)));
  std::printf("\n");

  // The target: 32 layers x 32K tokens x 64 eval queries x 6 rules x 5 budgets.
  double replay_exact = NAN, replay_upper = NAN, replay_exact_cpu = NAN, replay_upper_cpu = NAN;
  double replay_layer_1thread = NAN, replay_default_warm = NAN, default_metrics_layer = NAN;
  Json default_rule_seconds = Json::object();  // rule -> {select, metrics} of the warm default layer
  std::vector<std::pair<std::string, double>> select_per_rule;
  const LengthResult* ref32 = nullptr;
  for (const auto& r : results)
    if (r.S == 32768) ref32 = &r;
  if (!quick && !vm.count("no-replay")) {
    const BenchLayer b = make_layer(32768);
    const std::string rules_exact =
        "snapkv;pyramid(snapkv);ada(snapkv);critical(snapkv);critical(ada(snapkv));streaming";
    const std::string rules_upper =
        "snapkv;pyramid(snapkv);ada(snapkv);critical(snapkv,norm=upper);critical(ada(snapkv),norm=upper);streaming";
    try {
      double c0 = cpu_seconds();
      const ReplayLayerTiming te = time_replay_layer(b, NormKind::l1, rules_exact);
      const double ce = cpu_seconds() - c0;
      c0 = cpu_seconds();
      const ReplayLayerTiming tu = time_replay_layer(b, NormKind::upper, rules_upper);
      const double cu = cpu_seconds() - c0;
      const double le = te.seconds, lu = tu.seconds;
      replay_exact = 32 * le;
      replay_upper = 32 * lu;
      replay_exact_cpu = 32 * ce / threads;
      replay_upper_cpu = 32 * cu / threads;
      std::printf("\nfull replay (32 layers x 32K x 64 eval x 6 rules x 5 budgets), one layer measured x 32,\n"
                  "trace reading excluded:\n"
                  "  --nu exact: %.1f s wall (layer %.2f s); CPU time / %d threads: %.1f s\n"
                  "  --nu upper: %.1f s wall (layer %.2f s); CPU time / %d threads: %.1f s\n"
                  "rules: %s (upper: critical rules with norm=upper)\n",
                  replay_exact, le, threads, replay_exact_cpu, replay_upper, lu, threads, replay_upper_cpu,
                  rules_exact.c_str());
      select_per_rule = te.select_seconds;
      // kvsim replay's default set at 5 budgets with a warm nu cache (norms read, not computed).
      const ReplayLayerTiming warm = time_replay_layer(b, NormKind::l1, "default", true, true);
      replay_default_warm = 32 * warm.seconds;
      default_metrics_layer = warm.metrics_total;
      std::printf("  default set (15 rules x 5 budgets), --nu exact from a warm nu cache: %.1f s wall (layer %.2f s,\n"
                  "  of which metrics of all 75 selections in one walk %.2f s);\n"
                  "  per rule, select + metrics of its 5 budgets alone (one layer, timed apart):\n",
                  replay_default_warm, warm.seconds, warm.metrics_total);
      for (std::size_t i = 0; i < warm.select_seconds.size(); ++i) {
        std::printf("    %-58.58s %7.3f s + %7.3f s\n", warm.select_seconds[i].first.c_str(),
                    warm.select_seconds[i].second, warm.metrics_seconds[i].second);
        default_rule_seconds[warm.select_seconds[i].first] = {{"select", warm.select_seconds[i].second},
                                                              {"metrics", warm.metrics_seconds[i].second}};
      }
      // The rest of kvsim replay's default set: selection only (its metrics cost what the above cost).
      for (const auto& [spec, sec] : select_only_timings(b, "default", rules_exact)) select_per_rule.emplace_back(spec, sec);
      std::printf("selection time per rule (one layer, 5 budgets; the default set, select() alone):\n");
      for (const auto& [spec, sec] : select_per_rule) std::printf("  %-60.60s %8.3f s\n", spec.c_str(), sec);
      if (threads > 1) {  // the same layer on one thread: what the extra threads buy
        omp_set_num_threads(1);
        replay_layer_1thread = time_replay_layer(b, NormKind::l1, rules_exact).seconds;
        omp_set_num_threads(threads);
        std::printf("thread scaling of the replay layer: 1 thread %.2f s, %d threads %.2f s: %.2fx "
                    "(load average %.1f: a busy core caps it)\n",
                    replay_layer_1thread, threads, le, replay_layer_1thread / le, (getloadavg(load, 1), load[0]));
      }
    } catch (const Error& e) {
      std::printf("\nfull replay not measured: %s\n", e.what());
    }
  }
  const std::int64_t rss = peak_rss_bytes();
  std::printf("peak RSS %.2f GiB\n", double(rss) / double(1 << 30));

  if (!vm.count("no-kernels")) try {
    const auto kt = kernels::bench_kernels();
    std::printf("\n%-26s %-22s %12s %12s %8s\n", "kernel", "shape", "scalar Ge/s", "fast Ge/s", "speedup");
    for (const auto& k : kt)
      std::printf("%-26s %-22s %12.2f %12.2f %8.1f\n", k.kernel.c_str(), k.shape.c_str(), k.scalar_gelem_s(),
                  k.fast_gelem_s(), k.speedup());
  } catch (const std::exception& e) {
    std::printf("kernel bench failed: %s\n", e.what());
  }

  if (!json_path.empty()) {
    const LengthResult& key = ref32 ? *ref32 : results.back();
    Json j = {{"isa", kernels::isa_name(kernels::active_isa())},
              {"threads", threads},
              {"blas", blas_json(blas)},
              {"peak_gflops", peak.gflops_all},
              {"peak_gflops_per_core", peak.gflops_per_thread},
              {"best_sgemm_gflops", sgemm_best},
              {"metrics_floor_ratio", key.metrics_batch_s / (key.metrics_batch_floor_flops / (sgemm_best * 1e9))},
              {"metrics_floor_ratio_single", key.metrics_s / (key.metrics_floor_flops / (sgemm_best * 1e9))},
              {"torch", Json::object()},
              {"reference_seq_len", key.S},
              {"sgemm_ratio", key.sgemm_s / key.core_s},
              {"numpy_speedup", key.numpy_s / key.core_s},
              {"numpy_speedup_nu_exact", key.numpy_nu_s / key.nu_exact_s},
              {"numpy_speedup_metrics", key.numpy_metrics_s / key.metrics_s},
              {"numpy_blas", numpy_blas},
              {"full_replay_seconds", replay_exact},
              {"full_replay_seconds_nu_upper", replay_upper},
              {"default_replay_warm_seconds", replay_default_warm},
              {"default_replay_warm_metrics_seconds_per_layer", default_metrics_layer},
              {"default_replay_layer_seconds_per_rule", default_rule_seconds},
              {"full_replay_cpu_seconds_per_thread", replay_exact_cpu},
              {"full_replay_cpu_seconds_per_thread_nu_upper", replay_upper_cpu},
              {"replay_layer_seconds_1_thread", replay_layer_1thread},
              {"replay_thread_scaling", replay_layer_1thread / (replay_exact / 32)},
              {"select_seconds_per_rule", Json::object()},
              {"load_average_note", "wall times include time other processes held the cores"},
              {"peak_rss_bytes", rss},
              {"lengths", Json::array()}};
    for (const auto& [spec, sec] : select_per_rule) j["select_seconds_per_rule"][spec] = sec;
    if (torch.error.empty()) {
      j["core_vs_torch_bmm"] = torch.torch_bmm_s / anchor_len->core_s;
      j["core_vs_torch_core"] = torch.torch_core_s / anchor_len->core_s;
      j["torch_replay_speedup"] = torch.torch_replay_s / torch.kvsim_replay_s;
      j["torch"] = {{"version", torch.torch_version}, {"blas", torch.blas}, {"seq_len", anchor_len->S},
                    {"bmm_seconds", torch.torch_bmm_s}, {"core_seconds", torch.torch_core_s},
                    {"replay_seconds", torch.torch_replay_s}, {"kvsim_replay_seconds", torch.kvsim_replay_s},
                    {"selections", torch.selections}, {"rules", kTorchAnchorRules}, {"budgets", kTorchAnchorBudgets},
                    {"max_rel_diff_l1", torch.max_rel_diff_l1}, {"max_rel_diff_F", torch.max_rel_diff_F}};
    } else {
      j["core_vs_torch_bmm"] = nullptr;
      j["torch_replay_speedup"] = nullptr;
      j["torch"] = {{"error", torch.error}};
    }
    for (const auto& r : results)
      j["lengths"].push_back({{"seq_len", r.S},
                              {"core_seconds", r.core_s},
                              {"core_cpu_seconds_per_thread", r.core_cpu_s},
                              {"core_gflops", r.flops() / r.core_s * 1e-9},
                              {"sgemm_seconds", r.sgemm_s},
                              {"core_seconds_1_thread", r.core1_s},
                              {"numpy_seconds", r.numpy_s},
                              {"numpy_nu_exact_seconds", r.numpy_nu_s},
                              {"numpy_metrics_seconds_per_selection", r.numpy_metrics_s},
                              {"nu_exact_seconds", r.nu_exact_s},
                              {"nu_exact_heads_measured", r.nu_exact_heads},
                              {"nu_upper_seconds", r.nu_upper_s},
                              {"nu_l2_seconds", r.nu_l2_s},
                              {"metrics_seconds_per_selection", r.metrics_s},
                              {"metrics_floor_ratio_single", r.metrics_s / (r.metrics_floor_flops / (sgemm_best * 1e9))},
                              {"metrics_batch_seconds_per_selection", r.metrics_batch_s},
                              {"metrics_floor_ratio", r.metrics_batch_s / (r.metrics_batch_floor_flops / (sgemm_best * 1e9))},
                              {"prob_tiles_peak_bytes", r.prob_tiles_peak_bytes},
                              {"peak_rss_bytes", r.rss}});
    write_file_atomic(json_path, json_text(j));
  }
  return 0;
}

}  // namespace
KVSIM_COMMAND("bench", "time the replay core against OpenBLAS sgemm and numpy on Llama-8B-shaped layers", cmd_bench);
}  // namespace kvsim::cli
