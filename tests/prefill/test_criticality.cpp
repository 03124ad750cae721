#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "prefill/criticality.h"
#include "random_layer.h"

using namespace kvsim;
using namespace kvsim::prefill;

TEST_CASE("criticality: hand-computed C_h(s, b) = max(mid . k+, mid . k-), no 1/sqrt(d)") {
  // n = 8, S = 4, bs = 2, one head, d = 2. Segment 0 queries (1,0) (3,2) (-1,4) (1,2):
  // q+ = (3,4), q- = (-1,0), mid = (1,2). Block 0 keys (1,-1) (2,3): k+ = (2,3), k- = (1,-1);
  // block 1 keys (0,5) (-2,1): k+ = (0,5), k- = (-2,1).
  avec<float> q = {1, 0, 3, 2, -1, 4, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0};
  avec<float> k = {1, -1, 2, 3, 0, 5, -2, 1, 9, 9, 9, 9, 9, 9, 9, 9};
  avec<float> v(k.size(), 0.0f);
  HeadsView x{1, 1, 2, 8, q.data(), 16, k.data(), v.data(), 16, 0.5f};
  PrefillConfig cfg;
  cfg.segment = 4;
  cfg.block = 2;
  cfg.budget = 2;
  cfg.threshold = 0;
  const SegmentPlan p8(8, cfg);    // 2 segments: only segment 0 profiled, blocks 0..1 scored
  const avec<float> c = head_criticality(x, p8, 0);
  REQUIRE(c.size() == 2);
  CHECK(c[0] == doctest::Approx(std::max(1 * 2 + 2 * 3, 1 * 1 + 2 * -1)));  // 8
  CHECK(c[1] == doctest::Approx(std::max(0 + 2 * 5, -2 + 2 * 1)));          // 10
}

TEST_CASE("criticality: GQA group mean, causal mask and softmax over eligible blocks") {
  PrefillConfig cfg;
  cfg.segment = 32;
  cfg.block = 8;
  cfg.budget = 16;
  cfg.threshold = 0;
  const i64 n = 200;
  test::RandomLayer L(4, 2, 8, n, 5);
  const SegmentPlan plan(n, cfg);
  const CriticalityMap map = estimate_criticality(L.view, plan);
  REQUIRE(map.num_segments == plan.num_profiled());
  const i64 r = 4;
  for (int g = 0; g < 2; ++g) {
    const avec<float> c0 = head_criticality(L.view, plan, 2 * g), c1 = head_criticality(L.view, plan, 2 * g + 1);
    for (i64 s = 0; s < map.num_segments; ++s) {
      const float* row = map.row(g, s);
      const i64 eligible = s * r;
      double tot = 0, mx = -INFINITY;
      for (i64 b = 0; b < eligible; ++b) mx = std::max(mx, 0.5 * (c0[s * map.num_blocks + b] + c1[s * map.num_blocks + b]));
      for (i64 b = 0; b < eligible; ++b) tot += std::exp(0.5 * (c0[s * map.num_blocks + b] + c1[s * map.num_blocks + b]) - mx);
      for (i64 b = 0; b < map.num_blocks; ++b) {
        if (b >= eligible) {
          CHECK(row[b] == 0.0f);
          continue;
        }
        const double expect = std::exp(0.5 * (c0[s * map.num_blocks + b] + c1[s * map.num_blocks + b]) - mx) / tot;
        CHECK(row[b] == doctest::Approx(expect).epsilon(1e-5));
      }
    }
  }
}

TEST_CASE("causality: no block at or after a segment's start is selected, on random data") {
  for (unsigned seed = 1; seed <= 5; ++seed) {
    PrefillConfig cfg;
    cfg.segment = 16 * static_cast<i64>(seed);
    cfg.block = 8;
    cfg.budget = 24;
    cfg.threshold = 0;
    const i64 n = 300 + 17 * seed;
    test::RandomLayer L(6, 3, 16, n, seed, 3.0f);
    const SegmentPlan plan(n, cfg);
    const BlockSelection sel = select_blocks(plan, estimate_criticality(L.view, plan));
    for (int g = 0; g < 3; ++g)
      for (i64 s = 0; s < plan.num_segments(); ++s) {
        const auto& seg = plan.segment(s);
        const auto& b = sel.blocks(g, s);
        CHECK(static_cast<i64>(b.size()) == seg.kept_blocks);
        for (auto blk : b) CHECK((blk + 1) * cfg.block <= seg.start);
        CHECK(std::is_sorted(b.begin(), b.end()));
      }
  }
  // set_blocks itself refuses a non-causal choice.
  PrefillConfig cfg;
  cfg.segment = 16;
  cfg.block = 8;
  cfg.threshold = 0;
  BlockSelection sel(SegmentPlan(64, cfg), 1);
  CHECK_THROWS_AS(sel.set_blocks(0, 1, {2}), Error);
  CHECK_NOTHROW(sel.set_blocks(0, 1, {1, 0}));
  CHECK(sel.blocks(0, 1) == std::vector<std::int32_t>{0, 1});
}

TEST_CASE("layer fusion: 0.25 previous + 0.75 current from layer 2 on; layers <= 1 store their own") {
  auto make = [](float base) {
    CriticalityMap m(1, 2, 4);
    for (std::size_t i = 0; i < m.p.size(); ++i) m.p[i] = base + static_cast<float>(i);
    return m;
  };
  const CriticalityMap m0 = make(0), m1 = make(100), m2 = make(200), m3 = make(400);
  LayerFusion f;
  CHECK(f.apply(0, m0).p == m0.p);  // layer 0 stores its map
  CHECK(f.apply(1, m1).p == m1.p);  // layer 1 too: no fusion with layer 0
  const CriticalityMap f2 = f.apply(2, m2);
  for (std::size_t i = 0; i < f2.p.size(); ++i) CHECK(f2.p[i] == doctest::Approx(0.25 * (100 + i) + 0.75 * (200 + i)));
  const CriticalityMap f3 = f.apply(3, m3);  // fuses with the FUSED map of layer 2
  for (std::size_t i = 0; i < f3.p.size(); ++i)
    CHECK(f3.p[i] == doctest::Approx(0.25 * (0.25 * (100 + i) + 0.75 * (200 + i)) + 0.75 * (400 + i)));
  // A gap in the layer sequence (predecessor ran dense) restarts the chain.
  LayerFusion g;
  CHECK(g.apply(3, m3).p == m3.p);
  CHECK(g.apply(4, m0).p == fuse_maps(m3, m0).p);
  CHECK(fuse_maps(m1, m2).p[1] == doctest::Approx(0.25f * 101 + 0.75f * 201));
}
