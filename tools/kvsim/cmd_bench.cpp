// kvsim bench: times the replay core on synthetic Llama-8B-shaped layers generated in memory
// (32 heads, 8 KV heads, head_dim 128, hidden 4096, 64 evaluation queries) and compares it, in
// the same run, with OpenBLAS sgemm on the same shapes and with a plain numpy implementation.
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "attention/layer_cache.h"
#include "attention/layer_reference.h"
#include "attention/perturbation.h"
#include "cli_args.h"
#include "command.h"
#include "core/error.h"
#include "core/json.h"
#include "core/splitmix.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "kernels/isa.h"
#include "kernels/kernel_bench.h"
#include "kernels/kernels.h"
#include "rules/factory.h"
#include "rules/window_attention.h"

namespace kvsim::cli {
namespace {

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128, kHidden = 4096, kEval = 64, kWindow = 64;

// Uniform(-a, a) with unit variance from a counter hash: parallel and deterministic.
void fill_random(float* x, i64 n, std::uint64_t seed, float scale) {
#pragma omp parallel for schedule(static)
  for (i64 i = 0; i < n; ++i) {
    const std::uint64_t z =
        splitmix64_finalize((static_cast<std::uint64_t>(i) + 1) * kSplitmixGolden ^ seed * 0xD1B54A32D192ED03ull);
    x[i] = scale * 1.7320508f * (static_cast<float>(z >> 40) / 8388608.f - 1.f);
  }
}

struct BenchLayer {
  TraceMeta meta;
  LayerData data;
  i64 n_c = 0;
  std::vector<i64> eval_rows, window_rows;
};

// Context of S - 64 tokens then 64 question tokens; stored queries: the 64-token observation
// window and the 64 evaluation queries.
BenchLayer make_layer(i64 S) {
  BenchLayer b;
  b.n_c = S - kEval;
  TraceMeta& m = b.meta;
  m.path = "bench";
  m.model = "synthetic llama-8b shape";
  m.num_layers = 32;
  m.num_heads = kHeads;
  m.num_kv_heads = kKvHeads;
  m.head_dim = kDim;
  m.hidden_size = kHidden;
  m.attn_scale = 1.0 / std::sqrt(double(kDim));
  m.seq_len = S;
  m.prefill_len = S;
  m.input_ids.assign(S, 0);
  m.segment.assign(S, kContext);
  for (i64 t = b.n_c; t < S; ++t) m.segment[t] = kQuestion;
  for (i64 t = b.n_c - kWindow; t < S; ++t) m.q_pos.push_back(t);
  m.has_o_proj = true;
  for (i64 r = 0; r < kWindow; ++r) b.window_rows.push_back(r);
  for (i64 r = kWindow; r < kWindow + kEval; ++r) b.eval_rows.push_back(r);
  LayerData& L = b.data;
  L.layer = 0;
  L.num_heads = kHeads;
  L.num_kv_heads = kKvHeads;
  L.head_dim = kDim;
  L.hidden_size = kHidden;
  L.seq_len = S;
  L.num_q = kWindow + kEval;
  L.q.resize(std::size_t(kHeads) * L.num_q * kDim);
  L.k.resize(std::size_t(kKvHeads) * S * kDim);
  L.v.resize(std::size_t(kKvHeads) * S * kDim);
  L.o_proj.resize(std::size_t(kHidden) * kHeads * kDim);
  fill_random(L.q.data(), i64(L.q.size()), 1, 1.f);
  fill_random(L.k.data(), i64(L.k.size()), 2, 1.f);
  fill_random(L.v.data(), i64(L.v.size()), 3, 1.f);
  fill_random(L.o_proj.data(), i64(L.o_proj.size()), 4, 1.f / 64.f);
  return b;
}

// Process CPU seconds (user + system, all threads): on a shared machine, wall time also counts
// the time other processes held the cores; CPU time / threads approximates an idle machine.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

template <class F> double best_of(int reps, F&& f) {
  double best = 1e300;
  for (int r = 0; r < reps; ++r) {
    Stopwatch sw;
    f();
    best = std::min(best, sw.seconds());
  }
  return best;
}

// The attention core: full causal attention + head outputs of the evaluation queries.
double time_core(const BenchLayer& b, int threads, int reps) {
  omp_set_num_threads(threads);
  return best_of(reps, [&] {
    LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows);
    cache.precompute(QuerySet::eval);
  });
}

// Plain OpenBLAS on the same shapes: per KV group QK^T [G*n x d]x[d x S] and PV [G*n x S]x[S x d].
double time_sgemm(const BenchLayer& b, int threads, int reps) {
  omp_set_num_threads(threads);
  const int G = kHeads / kKvHeads;
  const i64 S = b.data.seq_len, rows = G * kEval;
  avec<float> A(std::size_t(kKvHeads) * rows * kDim), C(std::size_t(kKvHeads) * rows * S),
      O(std::size_t(kKvHeads) * rows * kDim);
  fill_random(A.data(), i64(A.size()), 5, 1.f);
  return best_of(reps, [&] {
#pragma omp parallel for schedule(dynamic, 1)
    for (int g = 0; g < kKvHeads; ++g) {
      float* c = C.data() + std::size_t(g) * rows * S;
      kernels::sgemm(false, true, rows, S, kDim, 1.f, A.data() + std::size_t(g) * rows * kDim, kDim,
                     b.data.k_head(g), kDim, 0.f, c, S);
      kernels::sgemm(false, false, rows, kDim, S, 1.f, c, S, b.data.v_head(g), kDim, 0.f,
                     O.data() + std::size_t(g) * rows * kDim, kDim);
    }
  });
}

struct NumpyResult {
  double seconds = NAN, nu_per_head_s = NAN, metrics_s = NAN;
  std::string blas, error;
};

// The number after "key": in the script's one-line JSON, NaN when absent.
double json_number(const std::string& out, const std::string& key) {
  const auto at = out.find("\"" + key + "\": ");
  return at == std::string::npos ? NAN : std::stod(out.substr(at + key.size() + 4));
}

// tools/bench_numpy.py: the attention core; with `full`, also exact nu (4 heads) and the metrics
// of one selection, the same work kvsim's columns time.
NumpyResult run_numpy(i64 S, bool full) {
  NumpyResult r;
  const std::string cmd = std::string("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=") +
                          std::to_string(max_threads()) + " " KVSIM_PYTHON " " KVSIM_SOURCE_DIR
                          "/tools/bench_numpy.py --seq-len " + std::to_string(S) +
                          (full ? " --nu-heads 4 --metrics" : "") + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    r.error = "cannot start " KVSIM_PYTHON;
    return r;
  }
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int st = pclose(p);
  const auto sec = out.find("\"seconds\": ");
  if (st != 0 || sec == std::string::npos) {
    r.error = "bench_numpy.py failed: " + out.substr(0, 200);
    return r;
  }
  r.seconds = std::stod(out.substr(sec + 11));
  r.nu_per_head_s = json_number(out, "nu_exact_seconds_per_head");
  r.metrics_s = json_number(out, "metrics_seconds");
  const auto bl = out.find("\"blas\": \"");
  if (bl != std::string::npos) r.blas = out.substr(bl + 9, out.find('"', bl + 9) - bl - 9);
  return r;
}

struct LengthResult {
  i64 S = 0;
  double core_s = 0, core_cpu_s = 0, core1_s = 0, sgemm_s = 0, numpy_s = NAN, nu_exact_s = 0, nu_upper_s = 0, nu_l2_s = 0,
         metrics_s = 0, rss = 0, numpy_nu_s = NAN, numpy_metrics_s = NAN;
  int nu_exact_heads = 0;
  double flops() const { return 4.0 * kHeads * kEval * double(S) * kDim; }
};

// One layer of the full replay (6 rules x 5 budgets, metrics for every selection), with
// the wall time of each rule's select() (all budgets) apart.
struct ReplayLayerTiming {
  double seconds = 0;
  std::vector<std::pair<std::string, double>> select_seconds;  // rule spec -> select() wall time
};

// What a rule sees of the bench layer (as kvsim replay builds it per layer).
RuleInput bench_rule_input(const BenchLayer& b, LayerCache& cache, WindowAttentionMemo& window_memo) {
  RuleInput in;
  in.meta = &b.meta;
  in.data = &b.data;
  in.n_c = b.n_c;
  in.eval_rows = b.eval_rows;
  in.cache = &cache;
  in.window_memo = &window_memo;
  return in;
}

ReplayLayerTiming time_replay_layer(const BenchLayer& b, NormKind nu, const std::string& rules_spec) {
  WindowAttentionMemo window_memo;  // as in kvsim replay: snapkv-family rules share it
  ReplayLayerTiming t;
  Stopwatch sw;
  LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows, b.window_rows);
  LayerReference ref(cache, QuerySet::eval, nu);
  const auto rules = make_rules(rules_spec);
  const auto budgets = parse_budgets("0.1,0.2,0.3,0.4,0.5");
  const RuleInput in = bench_rule_input(b, cache, window_memo);
  for (const auto& r : rules) {
    Stopwatch sel;
    auto selections = r->select(in, budgets);
    t.select_seconds.emplace_back(r->spec(), sel.seconds());
    measure_perturbations(cache, ref, selections);
  }
  t.seconds = sw.seconds();
  return t;
}

// select() alone, all 5 budgets, for each rule of `set` that is not in `skip` (already timed).
std::vector<std::pair<std::string, double>> select_only_timings(const BenchLayer& b, const std::string& set,
                                                                const std::string& skip) {
  WindowAttentionMemo window_memo;
  LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows, b.window_rows);
  const auto budgets = parse_budgets("0.1,0.2,0.3,0.4,0.5");
  const RuleInput in = bench_rule_input(b, cache, window_memo);
  std::vector<std::string> done;
  for (const auto& r : make_rules(skip)) done.push_back(r->spec());
  std::vector<std::pair<std::string, double>> out;
  for (const auto& r : make_rules(set)) {
    if (std::find(done.begin(), done.end(), r->spec()) != done.end()) continue;
    Stopwatch sel;
    (void)r->select(in, budgets);
    out.emplace_back(r->spec(), sel.seconds());
  }
  return out;
}

int cmd_bench(const std::vector<std::string>& args) {
  namespace po = boost::program_options;
  std::string json_path, lengths_text = "4096,16384,32768,131072";
  po::options_description opts("kvsim bench [options]");
  opts.add_options()("help,h", "show this help")
      ("json", po::value(&json_path), "also write the results as JSON to this file")
      ("lengths", po::value(&lengths_text)->default_value(lengths_text), "sequence lengths (tokens)")
      ("quick", "short run: 4096,16384 only, one repetition, no full-replay measurement")
      ("no-numpy", "skip the numpy baseline")
      ("no-replay", "skip the full-replay measurement");
  const po::variables_map vm = parse_args(args, opts);
  if (vm.count("help")) {
    std::cout << "Times the replay core on synthetic Llama-8B-shaped layers (no disk): attention of 64\n"
                 "evaluation queries, projected value norms, perturbation metrics, and one layer of a full\n"
                 "replay (6 rules x 5 budgets), against in-run OpenBLAS sgemm and numpy.\n\n" << opts;
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
      const long long v = std::strtoll(tok.c_str(), &end, 10);
      if (!end || *end || v < 2 * (kEval + kWindow)) throw po::error("--lengths: bad length '" + tok + "'");
      lengths.push_back(v);
    }
  }
  const int threads = max_threads(), reps = quick ? 1 : 2;
  double load[1] = {NAN};
  getloadavg(load, 1);
  std::printf("kvsim bench: isa %s, %d threads, shape H=%d Hkv=%d d=%d D=%d, %d eval queries, load average %.1f\n",
              kernels::isa_name(kernels::active_isa()), threads, kHeads, kKvHeads, kDim, kHidden, kEval, load[0]);

  // Is BLAS single-threaded inside an OpenMP parallel region? One sgemm alone on thread 0 of a
  // 2-thread region vs the same sgemm outside (where OpenBLAS may use every thread).
  {
    const i64 m = 1024;
    avec<float> A(m * m), B(m * m), C(m * m);
    fill_random(A.data(), m * m, 7, 1.f);
    fill_random(B.data(), m * m, 8, 1.f);
    const double outside = best_of(3, [&] { kernels::sgemm(false, false, m, m, m, 1.f, A.data(), m, B.data(), m, 0.f, C.data(), m); });
    const double inside = best_of(3, [&] {
#pragma omp parallel num_threads(2)
      {
        if (omp_get_thread_num() == 0)
          kernels::sgemm(false, false, m, m, m, 1.f, A.data(), m, B.data(), m, 0.f, C.data(), m);
      }
    });
    // OpenBLAS's OpenMP build returns 1 from num_cpu_avail() when omp_in_parallel() (common_thread.h),
    // so the ratio is ~threads on an idle machine; on a loaded one it shrinks.
    std::printf("BLAS threading: sgemm 1024^3 outside a parallel region %.1f ms, alone on thread 0 of a 2-thread "
                "region %.1f ms (ratio %.2f; ~%d expected on an idle machine: BLAS is single-threaded inside)\n",
                outside * 1e3, inside * 1e3, inside / outside, std::min(2, max_threads()));
  }

  std::vector<LengthResult> results;
  std::string numpy_blas;
  for (i64 S : lengths) {
    LengthResult r;
    r.S = S;
    const BenchLayer b = make_layer(S);
    double c0 = cpu_seconds();
    r.core_s = time_core(b, threads, reps);
    r.core_cpu_s = (cpu_seconds() - c0) / reps / threads;
    r.sgemm_s = time_sgemm(b, threads, reps);
    r.core1_s = threads > 1 ? time_core(b, 1, 1) : r.core_s;
    omp_set_num_threads(threads);
    {
      LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows);
      cache.precompute(QuerySet::eval);
      r.nu_upper_s = best_of(1, [&] { cache.precompute_norms(NormKind::upper); });
      r.nu_l2_s = best_of(1, [&] { cache.precompute_norms(NormKind::l2); });
      // Exact L1 is ~2 S d D flops per head: all heads up to 32K tokens, else 4 heads, scaled.
      r.nu_exact_heads = S <= 32768 ? kHeads : 4;
      const double t = best_of(1, [&] {
#pragma omp parallel for schedule(dynamic, 1)
        for (int h = 0; h < r.nu_exact_heads; ++h) cache.value_norms(h, NormKind::l1);
      });
      r.nu_exact_s = t * kHeads / r.nu_exact_heads;
      LayerReference ref(cache, QuerySet::eval, NormKind::upper);
      Selection sel(GqaMode::kv, kKvHeads, b.n_c);
      for (i64 j = 0; j < i64(sel.kept.size()); ++j) sel.kept[j] = (j * 2654435761u) % 5 == 0;  // 20%
      r.metrics_s = best_of(reps, [&] { measure_perturbation(cache, ref, sel); });
    }
    if (!vm.count("no-numpy") && !(quick && S > 16384)) {
      const auto np = run_numpy(S, S <= 32768);
      if (!np.error.empty()) std::printf("numpy baseline: %s\n", np.error.c_str());
      r.numpy_s = np.seconds;
      r.numpy_nu_s = np.nu_per_head_s * kHeads;
      r.numpy_metrics_s = np.metrics_s;
      if (!np.blas.empty()) numpy_blas = np.blas;
    }
    r.rss = double(peak_rss_bytes());
    results.push_back(r);
  }

  std::printf("\n%8s %10s %9s %9s %10s %7s %9s %8s %8s %10s %10s %10s %10s %9s\n", "S", "core s", "cpu/thr s", "GFLOP/s",
              "sgemm s", "ratio", "numpy s", "x numpy", "1->2 thr", "ns/token", "nu exact", "nu upper",
              "metrics/sel", "peak RSS");
  for (const auto& r : results) {
    std::printf("%8lld %10.4f %9.4f %9.1f %10.4f %7.2f %9.3f %8.1f %8.2f %10.1f %9.2fs %9.4fs %10.4fs %7.2fGiB\n",
                static_cast<long long>(r.S), r.core_s, r.core_cpu_s, r.flops() / r.core_s * 1e-9, r.sgemm_s, r.sgemm_s / r.core_s,
                r.numpy_s, r.numpy_s / r.core_s, r.core1_s / r.core_s, r.core_s / double(r.S) * 1e9,
                r.nu_exact_s, r.nu_upper_s, r.metrics_s, r.rss / double(1 << 30));
  }
  std::printf("cpu/thr = process CPU seconds / threads (idle-machine estimate); ");
  std::printf("ratio = sgemm time / core time (attention core throughput as a share of in-run sgemm on the same\n"
              "shapes); ns/token = core time per token of context (flat = linear growth in seq_len);\n"
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

  // The target: 32 layers x 32K tokens x 64 eval queries x 6 rules x 5 budgets.
  double replay_exact = NAN, replay_upper = NAN, replay_exact_cpu = NAN, replay_upper_cpu = NAN;
  double replay_layer_1thread = NAN;
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

  try {
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
              {"reference_seq_len", key.S},
              {"sgemm_ratio", key.sgemm_s / key.core_s},
              {"numpy_speedup", key.numpy_s / key.core_s},
              {"numpy_speedup_nu_exact", key.numpy_nu_s / key.nu_exact_s},
              {"numpy_speedup_metrics", key.numpy_metrics_s / key.metrics_s},
              {"numpy_blas", numpy_blas},
              {"full_replay_seconds", replay_exact},
              {"full_replay_seconds_nu_upper", replay_upper},
              {"full_replay_cpu_seconds_per_thread", replay_exact_cpu},
              {"full_replay_cpu_seconds_per_thread_nu_upper", replay_upper_cpu},
              {"replay_layer_seconds_1_thread", replay_layer_1thread},
              {"replay_thread_scaling", replay_layer_1thread / (replay_exact / 32)},
              {"select_seconds_per_rule", Json::object()},
              {"load_average_note", "wall times include time other processes held the cores"},
              {"peak_rss_bytes", static_cast<i64>(rss)},
              {"lengths", Json::array()}};
    for (const auto& [spec, sec] : select_per_rule) j["select_seconds_per_rule"][spec] = sec;
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
                              {"peak_rss_bytes", r.rss}});
    write_file_atomic(json_path, json_text(j));
  }
  return 0;
}

}  // namespace
KVSIM_COMMAND("bench", "time the replay core against OpenBLAS sgemm and numpy on Llama-8B-shaped layers", cmd_bench);
}  // namespace kvsim::cli
