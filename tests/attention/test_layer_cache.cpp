// LayerCache: attention probabilities and projected value norms against float64 loops.
#include <doctest/doctest.h>

#include <cmath>

#include "attention/layer_cache.h"
#include "layer_fixtures.h"

using namespace kvsim;
using namespace kvsim::test;

TEST_CASE("prob_row: causal softmax of the evaluation queries, one row per query, whatever the tiles") {
  for (int G : {1, 2, 4})
    for (int per_tile : {0, 1, 2}) {  // queries per tile (0: the default budget, one tile per group)
    CAPTURE(G);
    CAPTURE(per_tile);
    LayerShape s;
    s.Hkv = 2; s.H = 2 * G; s.S = 40; s.n_c = 25;
    const auto meta = make_meta(s);
    const auto L = make_layer(s, 3 + G);
    std::vector<i64> rows = {25, 30, 39};
    LayerCache cache(meta, L, s.n_c, rows);
    if (per_tile) cache.set_tile_budget(static_cast<std::size_t>(per_tile) * G * s.S * sizeof(float));
    CHECK(cache.n_eval() == 3);
    CHECK(cache.tile_queries(QuerySet::eval) == (per_tile ? per_tile : 3));
    CHECK(cache.tile_ranges(QuerySet::eval) == (per_tile == 1 ? 3 : per_tile == 2 ? 2 : 1));
    for (int h = 0; h < s.H; ++h) {
      for (i64 qi = 0; qi < 3; ++qi) {
        const float* p = cache.prob_row(QuerySet::eval, h, qi);
        const i64 t = cache.eval_pos(qi);
        std::vector<double> lg(t + 1);
        double mx = -1e300, z = 0;
        for (i64 j = 0; j <= t; ++j) {
          double acc = 0;
          for (int c = 0; c < s.d; ++c)
            acc += double(L.q_row(h, rows[qi])[c]) * L.k_row(h / G, j)[c];
          lg[j] = acc * meta.attn_scale;
          mx = std::max(mx, lg[j]);
        }
        for (auto& x : lg) z += std::exp(x - mx);
        for (i64 j = 0; j < s.S; ++j) {
          const double want = j <= t ? std::exp(lg[j] - mx) / z : 0.0;
          CHECK(p[j] == doctest::Approx(want).epsilon(1e-5));
        }
      }
    }
    // The head outputs agree with one tile per group (within float32 reassociation: the sgemm's
    // rounding depends on its row count).
    LayerCache whole(meta, L, s.n_c, rows);
    for (int h = 0; h < s.H; ++h)
      for (i64 i = 0; i < 3 * s.d; ++i)
        CHECK(cache.outputs(QuerySet::eval, h)[i] == doctest::Approx(whole.outputs(QuerySet::eval, h)[i]).epsilon(1e-5));
  }
}

TEST_CASE("value norms: exact L1, L2 (Gram), upper bound; identity without o_proj") {
  for (bool op : {true, false}) {
    LayerShape s;
    s.o_proj = op;
    s.H = 4; s.Hkv = 2; s.d = 8; s.D = 1100;  // D > column block: exercises blocking
    s.S = 300; s.n_c = 200;                    // rows > row block (256)
    const auto meta = make_meta(s);
    const auto L = make_layer(s, 17);
    std::vector<i64> rows = {250, 280};
    LayerCache cache(meta, L, s.n_c, rows);
    CHECK(cache.norm_len() == 281);
    for (int h = 0; h < s.H; ++h) {
      const float* l1 = cache.value_norms(h, NormKind::l1);
      const float* l2 = cache.value_norms(h, NormKind::l2);
      const float* up = cache.value_norms(h, NormKind::upper);
      CHECK(cache.value_norms(h, NormKind::l1) == l1);  // computed once
      for (i64 j = 0; j < cache.norm_len(); ++j) {
        CHECK(l1[j] == doctest::Approx(oracle_nu(L, h, j, 0)).epsilon(1e-5));
        CHECK(l2[j] == doctest::Approx(oracle_nu(L, h, j, 1)).epsilon(1e-5));
        CHECK(up[j] == doctest::Approx(oracle_nu(L, h, j, 2)).epsilon(1e-5));
        CHECK(up[j] >= l1[j] * (1 - 1e-6));
      }
      CHECK(std::isnan(l1[cache.norm_len()]));
    }
  }
}
