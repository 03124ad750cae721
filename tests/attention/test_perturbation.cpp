// Perturbation metrics and bounds against the float64 oracle, invariants and determinism.
#include <doctest/doctest.h>
#include <omp.h>

#include <cmath>
#include <memory>
#include <random>

#include "attention/layer_cache.h"
#include "attention/layer_reference.h"
#include "attention/perturbation.h"
#include "core/error.h"
#include "quant/quantized_kv.h"
#include "layer_fixtures.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

std::vector<i64> rows_from(const TraceMeta& m, i64 lo, i64 hi) {
  std::vector<i64> r;
  for (i64 i = 0; i < m.num_queries(); ++i)
    if (m.q_pos[i] >= lo && m.q_pos[i] < hi) r.push_back(i);
  return r;
}

// Bit-identical (NaN equal to NaN).
bool same_values(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size()) return false;
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i] || (std::isnan(x[i]) && std::isnan(y[i])))) return false;
  return true;
}

bool same_result(const PerturbationResult& a, const PerturbationResult& b) {
  return same_values(a.F, b.F) && same_values(a.l1, b.l1) && same_values(a.l2, b.l2) &&
         same_values(a.rel_l1, b.rel_l1) && same_values(a.bound_ada, b.bound_ada) &&
         same_values(a.theta, b.theta) && same_values(a.layer_l1, b.layer_l1) &&
         same_values(a.layer_l2, b.layer_l2) && same_values(a.layer_ada, b.layer_ada) &&
         same_values(a.layer_theta, b.layer_theta) && same_values(a.layer_F_min, b.layer_F_min);
}

// Step-wise per-query masks over [0, t] for every unit and evaluation query of `cache`: every
// `step`-th position from `first` evicted, the query's own position kept.
void add_stepwise_masks(Selection& sel, const LayerCache& cache, std::size_t first, std::size_t step) {
  for (int u = 0; u < sel.units; ++u)
    for (i64 qi = 0; qi < cache.n_eval(); ++qi) {
      std::vector<std::uint8_t> m(cache.eval_pos(qi) + 1, 1);
      for (std::size_t j = first; j < m.size(); j += step) m[j] = 0;
      m.back() = 1;
      sel.per_query.push_back(m);
    }
}

// A replay's mix of rules, as selections: nested budgets (one ranking), unrelated kv + query sets,
// a step-wise rule and a ThinK rule (one pruned key channel), random from seeds seed, seed + 1, ...
std::vector<std::vector<Selection>> replay_like_rules(const LayerShape& s, const LayerCache& cache, unsigned seed,
                                                      int pruned_channel) {
  std::vector<std::vector<Selection>> rules(4);
  for (double keep : {0.1, 0.3, 0.6}) rules[0].push_back(random_selection(s, GqaMode::kv, keep, seed));
  rules[1].push_back(random_selection(s, GqaMode::kv, 0.2, seed + 1));
  rules[1].push_back(random_selection(s, GqaMode::query, 0.4, seed + 2));
  auto stepwise = random_selection(s, GqaMode::kv, 0.5, seed + 3);
  add_stepwise_masks(stepwise, cache, 1, 4);
  rules[2].push_back(stepwise);
  auto think = random_selection(s, GqaMode::kv, 0.5, seed + 4);
  think.key_channels.assign(s.Hkv * s.d, 1);
  think.key_channels[pruned_channel] = 0;
  rules[3].push_back(think);
  return rules;
}

// |fast - exact| <= 1e-5 |exact| + 1e-6 scale (scale: magnitude of the quantity's reference).
void check_close(double fast, double exact, double scale, const std::string& what) {
  INFO(what << ": fast " << fast << " oracle " << exact);
  CHECK(std::fabs(fast - exact) <= 1e-5 * std::fabs(exact) + 1e-6 * scale);
}

void compare(const PerturbationResult& r, const OracleLayer& o, const LayerReference& ref, bool bounds = true) {
  for (int h = 0; h < r.num_heads; ++h)
    for (i64 qi = 0; qi < r.n_q; ++qi) {
      const auto& e = o.head[h * r.n_q + qi];
      const std::size_t k = r.at(h, qi);
      const double sc = ref.head_out_l1(h, qi);
      check_close(r.F[k], e.F, 1.0, "F");
      check_close(r.l1[k], e.l1, sc, "l1");
      check_close(r.l2[k], e.l2, ref.head_out_l2(h, qi), "l2");
      check_close(r.rel_l1[k], e.rel_l1, 1.0, "rel_l1");
      check_close(r.rel_l2[k], e.rel_l2, 1.0, "rel_l2");
      if (bounds) {
        check_close(r.bound_ada[k], e.ada, ref.nu_max(h, qi), "bound_ada");
        check_close(r.theta[k], e.theta, ref.nu_max(h, qi), "theta");
      }
    }
  for (i64 qi = 0; qi < r.n_q; ++qi) {
    check_close(r.layer_l1[qi], o.l1[qi], ref.layer_out_l1(qi), "layer l1");
    check_close(r.layer_l2[qi], o.l2[qi], ref.layer_out_l2(qi), "layer l2");
    check_close(r.layer_rel_l1[qi], o.rel_l1[qi], 1.0, "layer rel l1");
    if (bounds) {
      check_close(r.layer_ada[qi], o.ada[qi], o.ada[qi] + 1.0, "layer ada");
      check_close(r.layer_theta[qi], o.theta[qi], o.theta[qi] + 1.0, "layer theta");
    }
  }
}

// measured <= theta <= 2(1-F) max nu per head; layer measured <= sum theta <= Ada-KV.
void check_bound_chain(const PerturbationResult& r) {
  const double tol = 1e-5;
  for (int h = 0; h < r.num_heads; ++h)
    for (i64 qi = 0; qi < r.n_q; ++qi) {
      const std::size_t k = r.at(h, qi);
      CHECK(r.l1[k] <= r.theta[k] * (1 + tol) + 1e-9);
      CHECK(r.theta[k] <= r.bound_ada[k] * (1 + tol) + 1e-9);
      CHECK(r.F[k] <= 1.0 + 1e-6);
    }
  for (i64 qi = 0; qi < r.n_q; ++qi) {
    CHECK(r.layer_l1[qi] <= r.layer_theta[qi] * (1 + tol) + 1e-9);
    CHECK(r.layer_theta[qi] <= r.layer_ada[qi] * (1 + tol) + 1e-9);
  }
}

struct Case {
  LayerShape shape;
  const char* name;
};

std::vector<Case> cases() {
  std::vector<Case> cs;
  for (int G : {1, 2, 4})
    for (bool op : {true, false})
      for (bool st : {false, true}) {
        LayerShape s;
        s.Hkv = 2;
        s.H = 2 * G;
        s.o_proj = op;
        s.structured = st;
        s.S = st ? 64 : 48;
        s.n_c = st ? 40 : 30;
        cs.push_back({s, "case"});
      }
  return cs;
}

}  // namespace

TEST_CASE("keep-all gives F = 1 and exactly zero perturbation and bounds") {
  for (const auto& c : cases()) {
    const auto meta = make_meta(c.shape);
    const auto L = make_layer(c.shape, 7);
    LayerCache cache(meta, L, c.shape.n_c, rows_from(meta, c.shape.n_c, c.shape.S));
    LayerReference ref(cache, QuerySet::eval, NormKind::l1);
    for (GqaMode mode : {GqaMode::kv, GqaMode::query}) {
      Selection sel(mode, mode == GqaMode::kv ? c.shape.Hkv : c.shape.H, c.shape.n_c);
      std::fill(sel.kept.begin(), sel.kept.end(), 1);
      const auto r = measure_perturbation(cache, ref, sel);
      for (std::size_t k = 0; k < r.F.size(); ++k) {
        CHECK(r.F[k] == 1.0);
        CHECK(r.l1[k] == 0.0);
        CHECK(r.l2[k] == 0.0);
        CHECK(r.theta[k] == 0.0);
        CHECK(r.bound_ada[k] == 0.0);
      }
      for (i64 qi = 0; qi < r.n_q; ++qi) {
        CHECK(r.layer_l1[qi] == 0.0);
        CHECK(r.layer_ada[qi] == 0.0);
        CHECK(r.layer_F_min[qi] == 1.0);
      }
    }
  }
}

TEST_CASE("static selections agree with the float64 oracle; bound chain holds (kv and query modes)") {
  unsigned seed = 11;
  for (const auto& c : cases()) {
    const auto meta = make_meta(c.shape);
    const auto L = make_layer(c.shape, seed++);
    const auto rows = rows_from(meta, c.shape.n_c, c.shape.S);
    LayerCache cache(meta, L, c.shape.n_c, rows);
    LayerReference ref(cache, QuerySet::eval, NormKind::l1);
    for (GqaMode mode : {GqaMode::kv, GqaMode::query})
      for (double keep : {0.2, 0.6}) {
        CAPTURE(c.shape.H);
        CAPTURE(c.shape.o_proj);
        CAPTURE(c.shape.structured);
        CAPTURE(keep);
        const auto sel = random_selection(c.shape, mode, keep, seed++);
        const int G = c.shape.H / c.shape.Hkv;
        auto support = [&](int h, i64, i64 j) {
          const int u = mode == GqaMode::kv ? h / G : h;
          return j >= c.shape.n_c || sel.unit_mask(u)[j] != 0;
        };
        const auto r = measure_perturbation(cache, ref, sel);
        compare(r, oracle(meta, L, rows, support), ref);
        check_bound_chain(r);
      }
  }
}

TEST_CASE("soft-capped logits (trace format v2, Gemma 2): metrics and bounds agree with the oracle") {
  unsigned seed = 91;
  for (double cap : {0.75, 3.0}) {
    LayerShape s;
    s.H = 4;
    s.structured = true;
    s.S = 64;
    s.n_c = 40;
    auto meta = make_meta(s);
    meta.attn_softcap = cap;
    const auto L = make_layer(s, seed++);
    const auto rows = rows_from(meta, s.n_c, s.S);
    LayerCache cache(meta, L, s.n_c, rows);
    LayerReference ref(cache, QuerySet::eval, NormKind::l1);
    const auto sel = random_selection(s, GqaMode::kv, 0.3, seed++);
    auto support = [&](int h, i64, i64 j) { return j >= s.n_c || sel.unit_mask(h / 2)[j] != 0; };
    const auto r = measure_perturbation(cache, ref, sel);
    compare(r, oracle(meta, L, rows, support), ref);
    check_bound_chain(r);
    // The cap changes the attention: the uncapped probabilities differ.
    auto plain = meta;
    plain.attn_softcap = 0;
    LayerCache uncapped(plain, L, s.n_c, rows);
    double diff = 0;
    for (i64 j = 0; j < s.S; ++j)
      diff = std::max(diff, double(std::fabs(cache.prob_row(QuerySet::eval, 0, 0)[j] -
                                             uncapped.prob_row(QuerySet::eval, 0, 0)[j])));
    CHECK(diff > 1e-3);
  }
}

TEST_CASE("observation-window queries: support is the kept set within [0, t]") {
  LayerShape s;
  s.H = 4; s.Hkv = 2; s.S = 40; s.n_c = 32;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 5);
  const auto wrows = rows_from(meta, s.n_c - 8, s.n_c);
  LayerCache cache(meta, L, s.n_c, rows_from(meta, s.n_c, s.S), wrows);
  LayerReference ref(cache, QuerySet::window, NormKind::l1);
  auto sel = random_selection(s, GqaMode::kv, 0.5, 3);
  for (int u = 0; u < sel.units; ++u)
    for (i64 j = s.n_c - 8; j < s.n_c; ++j) sel.unit_mask(u)[j] = 1;  // window protected
  const auto r = measure_perturbation(cache, ref, sel);
  auto support = [&](int h, i64, i64 j) { return sel.unit_mask(h / 2)[j] != 0; };
  compare(r, oracle(meta, L, wrows, support), ref);
  check_bound_chain(r);
}

TEST_CASE("per-query masks (step-wise rules) agree with the oracle") {
  LayerShape s;
  s.H = 4; s.Hkv = 1; s.S = 50; s.n_c = 30; s.structured = true;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 9);
  const auto rows = rows_from(meta, s.n_c, s.S);
  LayerCache cache(meta, L, s.n_c, rows);
  LayerReference ref(cache, QuerySet::eval, NormKind::l1);
  for (GqaMode mode : {GqaMode::kv, GqaMode::query}) {
    auto sel = random_selection(s, mode, 1.0, 1);
    std::mt19937 rng(4);
    const i64 n = static_cast<i64>(rows.size());
    for (int u = 0; u < sel.units; ++u)
      for (i64 qi = 0; qi < n; ++qi) {
        std::vector<std::uint8_t> m(cache.eval_pos(qi) + 1);
        for (auto& x : m) x = rng() % 3 != 0;
        if (qi == 0) std::fill(m.begin(), m.end(), 1);  // one query keeps everything
        if (!m.empty()) m.back() = 1;  // never empty (t >= 0); the guard silences a GCC 12 false positive
        sel.per_query.push_back(m);
      }
    auto support = [&](int h, i64 qi, i64 j) {
      const int u = mode == GqaMode::kv ? h / 4 : h;
      return sel.per_query[u * n + qi][j] != 0;
    };
    const auto r = measure_perturbation(cache, ref, sel);
    compare(r, oracle(meta, L, rows, support), ref);
    check_bound_chain(r);
    for (int h = 0; h < s.H; ++h) CHECK(r.l1[r.at(h, 0)] == 0.0);
  }
}

namespace {

// The recomputed-attention tests' layer: 4 heads, 2 KV heads, 40 positions compressed at 28,
// soft-capped at `cap` (structured keys when capped), with or without o_proj; its evaluation
// queries, cache and full-attention reference.
struct SmallLayer {
  LayerShape s;
  TraceMeta meta;
  LayerData L;
  std::vector<i64> rows;
  std::unique_ptr<LayerCache> cache;
  std::unique_ptr<LayerReference> ref;
  SmallLayer(double cap, bool op, unsigned seed) {
    s.H = 4; s.Hkv = 2; s.S = 40; s.n_c = 28; s.o_proj = op;
    s.structured = cap > 0;
    meta = make_meta(s);
    meta.attn_softcap = cap;
    L = make_layer(s, seed);
    rows = rows_from(meta, s.n_c, s.S);
    cache = std::make_unique<LayerCache>(meta, L, s.n_c, rows);
    ref = std::make_unique<LayerReference>(*cache, QuerySet::eval, NormKind::l1);
  }
};

}  // namespace

TEST_CASE("key-channel pruning (ThinK): metrics and its bounds agree with the oracle, and bound it") {
  unsigned seed = 21;
  for (double cap : {0.0, 0.75, 3.0})
    for (GqaMode mode : {GqaMode::kv, GqaMode::query})
      for (bool op : {true, false}) {
        const SmallLayer fx(cap, op, seed++);
        const LayerShape& s = fx.s;
        auto sel = random_selection(s, mode, 0.5, seed++);
        sel.key_channels.assign(s.Hkv * s.d, 1);
        sel.key_channels[1] = sel.key_channels[5] = sel.key_channels[s.d + 2] = 0;
        auto support = [&](int h, i64, i64 j) { return j >= s.n_c || sel.unit_mask(mode == GqaMode::kv ? h / 2 : h)[j] != 0; };
        INFO("cap " << cap << " mode " << (mode == GqaMode::kv ? "kv" : "query") << " o_proj " << op);
        const auto r = measure_perturbation(*fx.cache, *fx.ref, sel);
        compare(r, oracle(fx.meta, fx.L, fx.rows, support, sel.key_channels, s.n_c), *fx.ref);
        check_bound_chain(r);
        // Pruning channels with every token kept still perturbs the output, and stays bounded.
        std::fill(sel.kept.begin(), sel.kept.end(), 1);
        const auto r2 = measure_perturbation(*fx.cache, *fx.ref, sel);
        CHECK(r2.F[0] == doctest::Approx(1.0));
        CHECK(r2.l1[0] > 0.0);
        CHECK(r2.theta[0] > 0.0);
        compare(r2, oracle(fx.meta, fx.L, fx.rows, [&](int, i64, i64) { return true; }, sel.key_channels, s.n_c), *fx.ref);
        check_bound_chain(r2);
      }
}

TEST_CASE("held caches with rows of their own (decode protocol: ThinK, quant): metrics and bounds agree with the oracle") {
  unsigned seed = 31;
  for (double cap : {0.0, 2.0})
    for (GqaMode mode : {GqaMode::kv, GqaMode::query})
      for (bool op : {true, false}) {
        const SmallLayer fx(cap, op, seed++);
        const LayerShape& s = fx.s;
        std::mt19937 rng(seed++);
        std::normal_distribution<float> N(0.f, 0.05f);
        Selection sel = random_selection(s, mode, 0.6, seed++);
        const int units = sel.units, G = s.H / s.Hkv;
        // Three caches: from n_c without rows; from n_c + 4 with pruned key channels (values the
        // trace's); from n_c + 8 with perturbed keys and values (a quantized cache).
        for (i64 from : {s.n_c, s.n_c + 4, s.n_c + 8}) {
          Selection::HeldCache c;
          c.from = from;
          c.held.resize(static_cast<std::size_t>(units) * from);
          for (auto& x : c.held) x = rng() % 3 != 0;
          if (from > s.n_c) {
            auto r = std::make_shared<QuantizedKV>();
            r->units = units;
            r->n_c = from;
            r->d = s.d;
            r->k.resize(static_cast<std::size_t>(units) * from * s.d);
            if (from == s.n_c + 8) r->v.resize(r->k.size());
            for (int u = 0; u < units; ++u) {
              const int g = mode == GqaMode::kv ? u : u / G;
              for (i64 j = 0; j < from; ++j)
                for (int x = 0; x < s.d; ++x) {
                  const float k = fx.L.k[(g * s.S + j) * s.d + x], v = fx.L.v[(g * s.S + j) * s.d + x];
                  float* kr = r->k.data() + (static_cast<std::size_t>(u) * from + j) * s.d;
                  kr[x] = r->has_values() ? k + N(rng) : (x % 3 == u % 3 ? 0.f : k);
                  if (r->has_values()) r->v[(static_cast<std::size_t>(u) * from + j) * s.d + x] = v + N(rng);
                }
            }
            c.rows = r;
          }
          sel.held_caches.push_back(std::move(c));
        }
        for (i64 qi = 0; qi < static_cast<i64>(fx.rows.size()); ++qi) {
          const i64 t = fx.meta.q_pos[fx.rows[qi]];
          sel.held_of.push_back(t < s.n_c + 4 ? 0 : t < s.n_c + 8 ? 1 : 2);
        }
        const auto unit = [&](int h) { return mode == GqaMode::kv ? h / G : h; };
        const auto held = [&](i64 qi) -> const Selection::HeldCache& { return sel.held_caches[sel.held_of[qi]]; };
        auto support = [&](int h, i64 qi, i64 j) {
          const auto& c = held(qi);
          return j >= c.from || c.held[static_cast<std::size_t>(unit(h)) * c.from + j] != 0;
        };
        GivenRows given = [&](int h, i64 qi, i64 j, std::vector<double>& k, std::vector<double>& v) {
          const QuantizedKV* r = held(qi).rows.get();
          if (!r || j >= r->n_c) return;
          for (int x = 0; x < s.d; ++x) {
            k[x] = r->k_row(unit(h), j)[x];
            if (r->has_values()) v[x] = r->v_row(unit(h), j)[x];
          }
        };
        INFO("cap " << cap << " mode " << gqa_mode_name(mode) << " o_proj " << op);
        const auto r = measure_perturbation(*fx.cache, *fx.ref, sel);
        compare(r, oracle_given(fx.meta, fx.L, fx.rows, support, given), *fx.ref);
        check_bound_chain(r);
        // The rows matter: the same caches without them measure eviction alone.
        Selection plain = sel;
        for (auto& c : plain.held_caches) c.rows = nullptr;
        compare(measure_perturbation(*fx.cache, *fx.ref, plain), oracle(fx.meta, fx.L, fx.rows, support), *fx.ref);
      }
}

TEST_CASE("results are identical with 1 and 2 OpenMP threads") {
  LayerShape s;
  s.H = 8; s.Hkv = 2; s.d = 16; s.D = 64; s.S = 300; s.n_c = 200;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 2);
  const auto sel = random_selection(s, GqaMode::kv, 0.3, 6);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    LayerCache cache(meta, L, s.n_c, rows_from(meta, s.n_c, s.S));
    LayerReference ref(cache, QuerySet::eval, NormKind::l1);
    return measure_perturbation(cache, ref, sel);
  };
  const auto a = run(1), b = run(2);
  omp_set_num_threads(2);
  CHECK(a.l1 == b.l1);
  CHECK(a.l2 == b.l2);
  CHECK(a.theta == b.theta);
  CHECK(a.F == b.F);
  CHECK(a.layer_l1 == b.layer_l1);
  CHECK(a.layer_l2 == b.layer_l2);
}

TEST_CASE("upper value norm keeps theta a valid (looser) bound") {
  LayerShape s;
  s.structured = true;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 31);
  LayerCache cache(meta, L, s.n_c, rows_from(meta, s.n_c, s.S));
  LayerReference exact(cache, QuerySet::eval, NormKind::l1), upper(cache, QuerySet::eval, NormKind::upper);
  const auto sel = random_selection(s, GqaMode::kv, 0.4, 2);
  const auto a = measure_perturbation(cache, exact, sel), b = measure_perturbation(cache, upper, sel);
  for (std::size_t k = 0; k < a.theta.size(); ++k) {
    CHECK(b.theta[k] >= a.theta[k] * (1 - 1e-6));
    CHECK(b.l1[k] <= b.theta[k] * (1 + 1e-5) + 1e-9);
    CHECK(b.l1[k] == a.l1[k]);
  }
}

TEST_CASE("a selection of the wrong shape is rejected") {
  LayerShape s;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 1);
  LayerCache cache(meta, L, s.n_c, rows_from(meta, s.n_c, s.S));
  LayerReference ref(cache, QuerySet::eval, NormKind::l1);
  Selection bad(GqaMode::kv, s.H, s.n_c);  // query-head count in kv mode
  CHECK_THROWS_AS(measure_perturbation(cache, ref, bad), Error);
  Selection bad_nc(GqaMode::kv, s.Hkv, s.n_c - 1);
  CHECK_THROWS_AS(measure_perturbation(cache, ref, bad_nc), Error);
}

TEST_CASE("evicting a dominant sink (F -> 1e-6 .. 1e-3) stays accurate: masses are never differences") {
  LayerShape s;
  s.H = 2; s.Hkv = 1; s.S = 40; s.n_c = 30;
  const auto meta = make_meta(s);
  auto L = make_layer(s, 13);
  // Every query points at the key of position 0: it takes almost all the attention.
  for (int c = 0; c < s.d; ++c) L.k[c] = 9.f * (c % 2 ? 1.f : -1.f);
  for (int h = 0; h < s.H; ++h)
    for (i64 t = 0; t < s.S; ++t)
      for (int c = 0; c < s.d; ++c) L.q[(h * s.S + t) * s.d + c] = 1.2f * (c % 2 ? 1.f : -1.f) + 0.1f * c;
  const auto rows = rows_from(meta, s.n_c, s.S);
  LayerCache cache(meta, L, s.n_c, rows);
  LayerReference ref(cache, QuerySet::eval, NormKind::l1);
  Selection sel(GqaMode::kv, 1, s.n_c);
  std::fill(sel.kept.begin(), sel.kept.end(), 1);
  sel.kept[0] = 0;  // evict the sink
  auto support = [&](int, i64, i64 j) { return j != 0; };
  const auto r = measure_perturbation(cache, ref, sel);
  CHECK(r.F[0] < 1e-3);
  CHECK(r.F[0] > 0);
  compare(r, oracle(meta, L, rows, support), ref);
  check_bound_chain(r);
}

TEST_CASE("measure_perturbations: a batch (static kv + query, step-wise, ThinK) equals one call per selection") {
  LayerShape s;
  s.H = 8; s.Hkv = 2; s.d = 16; s.D = 80; s.S = 160; s.n_c = 120; s.structured = true;  // D: a padded panel
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 17);
  for (QuerySet set : {QuerySet::eval, QuerySet::window}) {
    CAPTURE(static_cast<int>(set));
    LayerCache cache(meta, L, s.n_c, rows_from(meta, s.n_c, s.S), rows_from(meta, s.n_c - 16, s.n_c));
    LayerReference ref(cache, set, NormKind::l1);
    std::vector<Selection> sels;
    // Different seeds: not nested, so the general path (nested sets: the next test case).
    unsigned kv_seed = 40;
    for (double keep : {0.05, 0.3, 0.6, 1.0}) sels.push_back(random_selection(s, GqaMode::kv, keep, kv_seed += 5));
    sels.push_back(random_selection(s, GqaMode::query, 0.4, 41));
    sels.push_back(random_selection(s, GqaMode::query, 0.1, 42));
    auto stepwise = random_selection(s, GqaMode::kv, 0.5, 43);
    add_stepwise_masks(stepwise, cache, 0, 3);
    sels.push_back(stepwise);
    auto think = random_selection(s, GqaMode::kv, 0.5, 44);
    think.key_channels.assign(s.Hkv * s.d, 1);
    think.key_channels[3] = 0;
    sels.push_back(think);
    const auto batch = measure_perturbations(cache, ref, sels);
    REQUIRE(batch.size() == sels.size());
    for (std::size_t b = 0; b < sels.size(); ++b) {
      CAPTURE(b);
      const auto one = measure_perturbation(cache, ref, sels[b]);
      const auto same = same_values;
      CHECK(same(batch[b].F, one.F));
      CHECK(same(batch[b].l1, one.l1));
      CHECK(same(batch[b].l2, one.l2));
      CHECK(same(batch[b].theta, one.theta));
      CHECK(same(batch[b].bound_ada, one.bound_ada));
      CHECK(same(batch[b].layer_l1, one.layer_l1));
      CHECK(same(batch[b].layer_l2, one.layer_l2));
      CHECK(same(batch[b].layer_theta, one.layer_theta));
    }
  }
}

TEST_CASE("measure_perturbations: nested kept sets (budgets of one ranking) measured segment-wise agree with "
          "one call per selection and with the float64 oracle") {
  unsigned seed = 71;
  for (const auto& c : cases()) {
    const auto meta = make_meta(c.shape);
    const auto L = make_layer(c.shape, seed++);
    const auto rows = rows_from(meta, c.shape.n_c, c.shape.S);
    LayerCache cache(meta, L, c.shape.n_c, rows);
    LayerReference ref(cache, QuerySet::eval, NormKind::l1);
    for (GqaMode mode : {GqaMode::kv, GqaMode::query}) {
      CAPTURE(c.shape.H);
      CAPTURE(c.shape.o_proj);
      CAPTURE(static_cast<int>(mode));
      // One seed, growing thresholds: each kept set contains the previous one (a ranking's prefixes),
      // listed out of order, with a duplicate, to exercise the chain's sort and empty segments.
      std::vector<Selection> sels;
      for (double keep : {0.5, 0.1, 0.8, 0.3, 0.3, 0.97}) sels.push_back(random_selection(c.shape, mode, keep, seed));
      ++seed;
      const auto batch = measure_perturbations(cache, ref, sels);
      const int G = c.shape.H / c.shape.Hkv;
      for (std::size_t b = 0; b < sels.size(); ++b) {
        CAPTURE(b);
        const auto one = measure_perturbation(cache, ref, sels[b]);
        auto support = [&](int h, i64, i64 j) {
          const int u = mode == GqaMode::kv ? h / G : h;
          return j >= c.shape.n_c || sels[b].unit_mask(u)[j] != 0;
        };
        compare(batch[b], oracle(meta, L, rows, support), ref);
        check_bound_chain(batch[b]);
        const auto close = [](const std::vector<double>& x, const std::vector<double>& y) {
          double scale = 0;
          for (double v : y) scale = std::max(scale, std::abs(v));
          for (std::size_t i = 0; i < x.size(); ++i)
            if (!(std::abs(x[i] - y[i]) <= 2e-6 * (std::abs(y[i]) + 1e-3 * scale))) return false;
          return x.size() == y.size();
        };
        CHECK(close(batch[b].F, one.F));
        CHECK(close(batch[b].l1, one.l1));
        CHECK(close(batch[b].l2, one.l2));
        CHECK(close(batch[b].theta, one.theta));
        CHECK(close(batch[b].layer_l1, one.layer_l1));
      }
    }
  }
}

TEST_CASE("measure_rules: every rule's budgets in one walk over the KV groups, tiles freed, equal bit for bit to "
          "measure_perturbations per rule; a released tile is recomputed bit-identically") {
  LayerShape s;
  s.H = 8; s.Hkv = 4; s.d = 16; s.D = 80; s.S = 160; s.n_c = 120; s.structured = true;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 23);
  const auto eval = rows_from(meta, s.n_c, s.S), window = rows_from(meta, s.n_c - 16, s.n_c);
  const auto rules = replay_like_rules(s, LayerCache(meta, L, s.n_c, eval), 90, 5);
  const int threads_before = omp_get_max_threads();
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (QuerySet set : {QuerySet::eval, QuerySet::window}) {
      CAPTURE(threads);
      CAPTURE(static_cast<int>(set));
      LayerCache kept(meta, L, s.n_c, eval, window), walked(meta, L, s.n_c, eval, window);
      LayerReference ref(kept, set, NormKind::l1);
      const auto all = measure_rules(walked, set, NormKind::l1, rules);
      REQUIRE(all.size() == rules.size());
      for (std::size_t r = 0; r < rules.size(); ++r) {
        const auto one = measure_perturbations(kept, ref, rules[r]);
        REQUIRE(all[r].size() == one.size());
        for (std::size_t b = 0; b < one.size(); ++b) {
          CAPTURE(r);
          CAPTURE(b);
          CHECK(same_result(all[r][b], one[b]));
        }
      }
      // At most one wave (one tile per thread) of [G][n][S] tiles alive at once, never all groups.
      const std::size_t tile = static_cast<std::size_t>(s.H / s.Hkv) * kept.count(set) * s.S * sizeof(float);
      CHECK(walked.prob_bytes_peak() >= tile);
      CHECK(walked.prob_bytes_peak() <= static_cast<std::size_t>(threads) * (tile + 64));
      // Released tiles come back bit-identical.
      for (int h = 0; h < s.H; ++h) {
        bool equal = true;
        for (i64 qi = 0; qi < kept.count(set); ++qi)
          for (i64 j = 0; j < s.S; ++j) equal &= kept.prob_row(set, h, qi)[j] == walked.prob_row(set, h, qi)[j];
        CHECK(equal);
      }
    }
  }
  omp_set_num_threads(threads_before);
}

TEST_CASE("measure_rules with the queries split over several probability tiles (long contexts) equals one tile "
          "per group; the tile memory is bounded by the budget, not by the query count") {
  LayerShape s;
  s.H = 8; s.Hkv = 4; s.d = 16; s.D = 80; s.S = 160; s.n_c = 100; s.structured = true;
  const auto meta = make_meta(s);
  const auto L = make_layer(s, 29);
  const auto eval = rows_from(meta, s.n_c, s.S), window = rows_from(meta, s.n_c - 16, s.n_c);
  const auto rules = replay_like_rules(s, LayerCache(meta, L, s.n_c, eval), 95, 3);
  // The float64 oracle's tolerance (check_close): ThinK's delta is a small difference of two
  // float32 outputs, and the tiling changes the shapes of the products that form them.
  const auto close = [](const std::vector<double>& x, const std::vector<double>& y) {
    double scale = 0;
    for (double v : y)
      if (std::isfinite(v)) scale = std::max(scale, std::abs(v));
    for (std::size_t i = 0; i < x.size(); ++i)
      if (!(std::abs(x[i] - y[i]) <= 1e-5 * std::abs(y[i]) + 1e-6 * scale) && !(std::isnan(x[i]) && std::isnan(y[i]))) {
        MESSAGE("row " << i << ": " << x[i] << " vs " << y[i] << " (scale " << scale << ")");
        return false;
      }
    return x.size() == y.size();
  };
  const int G = s.H / s.Hkv;
  for (QuerySet set : {QuerySet::eval, QuerySet::window}) {
    LayerCache whole(meta, L, s.n_c, eval, window);
    REQUIRE(whole.tile_ranges(set) == 1);
    const auto want = measure_rules(whole, set, NormKind::l1, rules);
    for (i64 per_tile : {1, 7, 13}) {
      CAPTURE(static_cast<int>(set));
      CAPTURE(per_tile);
      LayerCache ranged(meta, L, s.n_c, eval, window);
      const std::size_t per_query = static_cast<std::size_t>(G) * s.S * sizeof(float);
      ranged.set_tile_budget(per_tile * per_query);
      REQUIRE(ranged.tile_queries(set) <= per_tile);
      REQUIRE(ranged.tile_ranges(set) > 1);
      const auto got = measure_rules(ranged, set, NormKind::l1, rules);
      for (std::size_t r = 0; r < rules.size(); ++r)
        for (std::size_t b = 0; b < rules[r].size(); ++b) {
          CAPTURE(r);
          CAPTURE(b);
          const auto& x = got[r][b];
          const auto& y = want[r][b];
          CHECK(close(x.F, y.F));
          CHECK(close(x.l1, y.l1));
          CHECK(close(x.l2, y.l2));
          CHECK(close(x.bound_ada, y.bound_ada));
          CHECK(close(x.theta, y.theta));
          CHECK(close(x.layer_l1, y.layer_l1));
          CHECK(close(x.layer_l2, y.layer_l2));
          CHECK(close(x.layer_ada, y.layer_ada));
        }
      // Tiles of at most per_tile queries, one per thread at a time.
      CHECK(ranged.prob_bytes_peak() <= static_cast<std::size_t>(omp_get_max_threads()) * (per_tile * per_query + 64));
    }
  }
}
