#include <doctest/doctest.h>

#include "core/error.h"
#include "prefill/segment_plan.h"

using namespace kvsim;
using namespace kvsim::prefill;

TEST_CASE("rules doc 8.4: CritiPrefill counts at n = 128K with the reference defaults") {
  const SegmentPlan plan(131072, PrefillConfig{});  // no tensors: counts only
  CHECK(plan.num_segments() == 256);
  CHECK(plan.num_profiled() == 255);
  CHECK(plan.segment(255).dense);  // the 256th segment is never profiled
  i64 early = 0;
  for (const auto& s : plan.segments())
    if (s.start < 4096) {
      CHECK(s.dense);
      ++early;
    }
  CHECK(early == 8);
  CHECK(plan.num_dense_segments() == 9);
  CHECK(plan.num_sparse_segments() == 247);
  for (i64 s = 8; s < 255; ++s) {
    CHECK(!plan.segment(s).dense);
    CHECK(plan.segment(s).kept_blocks == 64);                     // 2048 keys
    CHECK(plan.segment(s).kept_blocks * 32 + plan.segment(s).len() == 2560);  // + own 512
  }
  CHECK(plan.segment(254).eligible_blocks == 254 * 16);  // 130,048 past keys visible
  // (mean visible keys of segments 8..254 = 67,584) / 2,560 = 26.4
  CHECK(plan.sparse_part_reduction() == doctest::Approx(67584.0 / 2560.0).epsilon(1e-12));
  CHECK(plan.sparse_part_reduction() == doctest::Approx(26.4));
  // Exact causal counts: dense n(n+1)/2; end-to-end reduction is smaller (dense segments).
  CHECK(plan.dense_pairs() == doctest::Approx(131072.0 * 131073.0 / 2));
  double expect = 0;
  for (i64 s = 0; s < 256; ++s) {
    const double start = s * 512.0;
    const double past = (s < 8 || s == 255) ? start : 2048.0;
    expect += 512.0 * past + 512.0 * 513.0 / 2;
  }
  CHECK(plan.sparse_pairs() == doctest::Approx(expect).epsilon(1e-12));
  CHECK(plan.pair_reduction() > 10.0);
  CHECK(plan.pair_reduction() < 26.4);
}

TEST_CASE("segment plan: partial last segment, short prompts, config errors") {
  PrefillConfig cfg;
  cfg.segment = 8;
  cfg.block = 4;
  cfg.budget = 8;  // K = 2
  cfg.threshold = 8;
  const SegmentPlan plan(30, cfg);  // segments [0,8) [8,16) [16,24) [24,30)
  REQUIRE(plan.num_segments() == 4);
  CHECK(plan.segment(3).len() == 6);
  CHECK(plan.segment(0).dense);
  CHECK(!plan.segment(1).dense);
  CHECK(plan.segment(1).kept_blocks == 2);
  CHECK(plan.segment(2).kept_blocks == 2);
  CHECK(plan.segment(3).dense);
  CHECK(plan.num_sparse_queries() == 16);
  // 8*9/2 + (8*8 + 36) + (8*8 + 36) + (6*24 + 21)
  CHECK(plan.sparse_pairs() == doctest::Approx(36 + 100 + 100 + 165));
  CHECK(SegmentPlan(5, cfg).num_segments() == 1);
  CHECK(SegmentPlan(5, cfg).num_sparse_segments() == 0);

  PrefillConfig bad = cfg;
  bad.segment = 10;
  CHECK_THROWS_WITH_AS(SegmentPlan(30, bad), "prefill: --segment: 10 is not a multiple of --block 4", Error);
  bad = cfg;
  bad.block = 0;
  CHECK_THROWS_AS(SegmentPlan(30, bad), Error);
  CHECK_THROWS_AS(SegmentPlan(0, cfg), Error);
}
