// Invariants on the real stories260K sample traces (skipped when traces/*.h5 are absent):
// keep-all gives zero perturbation; measured <= theta <= Ada-KV bound for every head and query,
// for token eviction alone and with key channels pruned as ThinK does.
#include <doctest/doctest.h>

#include <filesystem>
#include <random>

#include "attention/layer_cache.h"
#include "attention/layer_reference.h"
#include "attention/perturbation.h"
#include "replay/protocol.h"
#include "testutil/testutil.h"
#include "trace/trace_reader.h"

using namespace kvsim;

TEST_CASE("real traces: bound chain and keep-all on every layer") {
  int checked = 0;
  for (const char* name : {"niah_stories260k.h5", "longbench_stories260k.h5"}) {
    const std::string path = test::source_dir() + "/traces/" + name;
    if (!std::filesystem::exists(path)) continue;
    TraceReader reader(path);
    const auto& meta = reader.meta();
    const auto p = resolve_protocol(meta, ProtocolOptions{});
    for (int l = 0; l < meta.num_layers; ++l) {
      const auto data = reader.read_layer(l);
      LayerCache cache(meta, data, p.n_c, p.eval_rows, p.window_rows);
      LayerReference ref(cache, QuerySet::eval, NormKind::l1);
      std::mt19937 rng(l);
      for (GqaMode mode : {GqaMode::kv, GqaMode::query}) {
        Selection sel(mode, mode == GqaMode::kv ? meta.num_kv_heads : meta.num_heads, p.n_c);
        std::fill(sel.kept.begin(), sel.kept.end(), 1);
        const auto full = measure_perturbation(cache, ref, sel);
        for (std::size_t k = 0; k < full.l1.size(); ++k) CHECK(full.l1[k] == 0.0);
        for (auto& x : sel.kept) x = rng() % 4 == 0;
        for (bool prune : {false, true}) {
          if (prune) {
            sel.key_channels.assign(static_cast<std::size_t>(meta.num_kv_heads) * meta.head_dim, 1);
            for (auto& c : sel.key_channels) c = rng() % 3 != 0;
          }
          const auto r = measure_perturbation(cache, ref, sel);
          for (std::size_t k = 0; k < r.l1.size(); ++k) {
            CHECK(r.l1[k] <= r.theta[k] * (1 + 1e-5) + 1e-9);
            CHECK(r.theta[k] <= r.bound_ada[k] * (1 + 1e-5) + 1e-9);
          }
          for (i64 qi = 0; qi < r.n_q; ++qi) {
            CHECK(r.layer_l1[qi] <= r.layer_theta[qi] * (1 + 1e-5) + 1e-9);
            CHECK(r.layer_theta[qi] <= r.layer_ada[qi] * (1 + 1e-5) + 1e-9);
          }
        }
      }
      ++checked;
    }
  }
  MESSAGE("real-trace layers checked: " << checked);
}
