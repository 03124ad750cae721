#include "replay/torch_bench.h"

#include <omp.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "attention/layer_cache.h"
#include "attention/perturbation.h"
#include "core/error.h"
#include "core/json.h"
#include "core/script_json.h"
#include "core/sysinfo.h"
#include "core/output_path.h"
#include "rules/budget.h"
#include "rules/factory.h"
#include "rules/window_attention.h"

namespace kvsim::bench {

namespace {

// A temporary folder for the torch script's input (~330 MB at 32K): removed when it goes out of
// scope, and on SIGINT/SIGTERM through the CLI's cleanup registry (output_path.h), so an
// interrupted bench leaves nothing in /tmp.
struct TempFolder {
  std::filesystem::path path;
  std::vector<std::string> files;
  TempFolder() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/kvsim-bench-torch-XXXXXX";
    if (!mkdtemp(tmpl.data())) throw Error(tmpl + ": cannot create a temporary folder");
    path = tmpl;
    register_created_folder(path.string());
  }
  ~TempFolder() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
    for (const auto& f : files) unregister_partial_file(f);
    unregister_created_folder(path.string());
  }
  template <class T> void write_raw(const std::string& name, const T* x, std::size_t n) {
    const std::string p = (path / name).string();
    files.push_back(p);
    register_partial_file(p);
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(x), static_cast<std::streamsize>(n * sizeof(T)));
    if (!f) throw Error(p + ": cannot write the torch anchor's input");
  }
};

}  // namespace

TorchAnchor run_torch_anchor(const BenchLayer& b, int threads, int reps, const std::string& python,
                             const std::string& script) {
  TorchAnchor r;
  omp_set_num_threads(threads);
  // The selections, made once (not timed on either side).
  std::vector<std::vector<Selection>> rule_sels;  // [rule][budget], as a replay layer holds them
  std::vector<Selection> sels;                    // the same, flat (the torch script's order)
  {
    WindowAttentionMemo memo;
    LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows, b.window_rows);
    const RuleInput in = bench_rule_input(b, cache, memo);
    for (const auto& rule : make_rules(kTorchAnchorRules)) {
      rule_sels.push_back(rule->select(in, parse_budgets(kTorchAnchorBudgets)));
      sels.insert(sels.end(), rule_sels.back().begin(), rule_sels.back().end());
    }
  }
  for (const auto& s : sels)
    if (s.mode != sels.front().mode || !s.per_query.empty() || !s.key_channels.empty())
      throw Error("torch anchor: the anchored rules must give static selections of one GQA mode");
  r.selections = static_cast<int>(sels.size());
  // kvsim: the core and every selection's metrics, as a replay layer does them (measure_rules:
  // one walk over the probability tiles, each rule's budgets one batch, the reference formed
  // from the head outputs afterwards; building the reference first would run the core twice).
  std::vector<PerturbationResult> res;
  r.kvsim_replay_s = 1e300;
  for (int k = 0; k < reps; ++k) {
    Stopwatch sw;
    LayerCache cache(b.meta, b.data, b.n_c, b.eval_rows);
    const auto per_rule = measure_rules(cache, QuerySet::eval, NormKind::upper, rule_sels);
    r.kvsim_replay_s = std::min(r.kvsim_replay_s, sw.seconds());
    res.clear();
    for (const auto& rr : per_rule) res.insert(res.end(), rr.begin(), rr.end());
  }
  TempFolder tmp;
  const LayerData& L = b.data;
  const i64 n = static_cast<i64>(b.eval_rows.size());
  Json meta = {{"heads", L.num_heads}, {"kv_heads", L.num_kv_heads}, {"head_dim", L.head_dim},
               {"hidden", L.hidden_size}, {"seq_len", L.seq_len}, {"num_q", L.num_q}, {"n_c", b.n_c},
               {"attn_scale", b.meta.attn_scale}, {"selections", sels.size()}, {"units", sels.front().units},
               {"eval_rows", b.eval_rows}, {"eval_pos", Json::array()}};
  for (i64 r0 : b.eval_rows) meta["eval_pos"].push_back(b.meta.q_pos[r0]);
  const std::string layer_json = json_text(meta);
  tmp.write_raw("layer.json", layer_json.data(), layer_json.size());
  tmp.write_raw("q.f32", L.q.data(), L.q.size());
  tmp.write_raw("k.f32", L.k.data(), L.k.size());
  tmp.write_raw("v.f32", L.v.data(), L.v.size());
  tmp.write_raw("o_proj.f32", L.o_proj.data(), L.o_proj.size());
  std::vector<std::uint8_t> masks;
  std::vector<double> l1, F;
  for (std::size_t s = 0; s < sels.size(); ++s) {
    masks.insert(masks.end(), sels[s].kept.begin(), sels[s].kept.end());
    for (int h = 0; h < L.num_heads; ++h)
      for (i64 qi = 0; qi < n; ++qi) {
        l1.push_back(res[s].l1[res[s].at(h, qi)]);
        F.push_back(res[s].F[res[s].at(h, qi)]);
      }
  }
  tmp.write_raw("masks.u8", masks.data(), masks.size());
  tmp.write_raw("kvsim_l1.f64", l1.data(), l1.size());
  tmp.write_raw("kvsim_F.f64", F.data(), F.size());
  const ScriptJson got = run_json_script("env -u OPENBLAS_CORETYPE " + python + " " + script + " " +
                                              tmp.path.string() + " --threads " + std::to_string(threads) +
                                              " --reps " + std::to_string(reps),
                                          "bench_torch.py", "replay_seconds");
  if (!got.error.empty()) {
    r.error = got.error;
    return r;
  }
  const Json& j = got.json;
  r.torch_version = j.value("torch", "");
  r.blas = j.value("blas", "");
  r.torch_bmm_s = j["bmm_seconds"].get<double>();
  r.torch_core_s = j["core_seconds"].get<double>();
  r.torch_replay_s = j["replay_seconds"].get<double>();
  r.max_rel_diff_l1 = j["max_rel_diff_l1"].get<double>();
  r.max_rel_diff_F = j["max_rel_diff_F"].get<double>();
  return r;
}

}  // namespace kvsim::bench
