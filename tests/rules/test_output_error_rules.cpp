// Output-error rules (rules doc 2.17, 2.18): caote(base) and dropkv against their float64
// references (rules_reference.h) on synthetic layers with G = 1, 2, 4 and the stories260K NIAH
// trace, kept sets equal, scores to 1e-5 relative; and fixtures small enough to check by hand.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "rules/factory.h"
#include "rules/scored_rule.h"
#include "rules_reference.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

// Kept sets equal the reference's, except where the reference itself cannot tell: a token kept by
// one and evicted by the other whose float64 score is within tol (relative) of the reference's
// cut, a near-tie that float32 scores decide either way (counted, reported).
void check_kept(const Rule& rule, const TestLayer& L, const Mat& ref, i64 w, double tol) {
  for (const std::string text : {"0.1", "0.3", "cr=0.5"}) {
    const Budget b = Budget::parse(text);
    const i64 B = b.tokens_for(L.n_c);
    const auto sel = rule.select(L.input(), {b});
    const Masks want = ref_keep_prefix(ref, L.n_c, w, std::vector<i64>(ref.size(), B));
    i64 bad = 0, near = 0;
    for (int u = 0; u < sel[0].units; ++u) {
      double cut = 1e300;  // the lowest kept reference score of the prefix
      for (std::size_t j = 0; j < ref[u].size(); ++j)
        if (want[u][j]) cut = std::min(cut, ref[u][j]);
      for (std::size_t j = 0; j < ref[u].size(); ++j)
        if (sel[0].unit_mask(u)[j] != want[u][j]) {
          const bool tie = std::abs(ref[u][j] - cut) <= tol * std::abs(cut);
          (tie ? near : bad) += 1;
          if (!tie) MESSAGE("unit " << u << " token " << j << ": ref score " << ref[u][j] << ", cut " << cut);
        }
      for (i64 j = static_cast<i64>(ref[u].size()); j < L.n_c; ++j) bad += !sel[0].unit_mask(u)[j];  // window kept
    }
    CHECK_MESSAGE(bad == 0, rule.spec() << " @ " << text << ": " << bad << " kept-set differences (" << near
                                        << " near-ties within " << tol << " of the cut)");
  }
}

}  // namespace

TEST_CASE("caote(snapkv): the one-token eviction error of SnapKV's scores equals the float64 reference") {
  for (const auto& Lp : standard_test_layers(21, 2)) {
    const TestLayer& L = *Lp;
    for (const std::string gqa : {"mean", "query"}) {
      CAPTURE(gqa);
      const std::string spec = "caote(snapkv(window=16,kernel=5,pool=avg,gqa=" + gqa + "))";
      auto rule = make_rule(spec);
      RefSnap p;
      p.window = 16;
      p.kernel = 5;
      p.max_pool = false;
      p.gqa = gqa;
      const Mat ref = ref_caote(L, ref_snapkv(L, p), gqa == "query");
      const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(L.input());
      CHECK(worst_relative(s, ref) <= 1e-5);
      CHECK(s.n_protected == 16);
      check_kept(*rule, L, ref, 16, 1e-6);
    }
  }
}

TEST_CASE("dropkv: the squared eviction move summed over the window equals the float64 reference") {
  for (const auto& Lp : standard_test_layers(21, 2)) {
    const TestLayer& L = *Lp;
    for (const std::string gqa : {"mean", "max", "query"}) {
      CAPTURE(gqa);
      for (int kernel : {1, 5}) {
        CAPTURE(kernel);
        const std::string spec = "dropkv(window=16,kernel=" + std::to_string(kernel) + ",gqa=" + gqa + ")";
        auto rule = make_rule(spec);
        const Mat ref = ref_dropkv(L, 16, kernel, 1e-6, gqa);
        const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(L.input());
        // ||v_j - o_i|| is a difference of two vectors that can nearly cancel, with o_i a float32
        // product over the whole prefix: the kernel sets' float32 softmaxes (a few ulp apart) move
        // such scores by up to ~3e-4 relative against the float64 reference (scalar set).
        const double worst = worst_relative(s, ref);
        CHECK_MESSAGE(worst <= 1e-3, spec << ": worst relative score error " << worst);
        check_kept(*rule, L, ref, 16, 1e-5);
      }
    }
  }
}

TEST_CASE("caote: hand-checked fixture; refuses bases that are not attention scores") {
  // Two candidates with weights 3:1 and values 0 and 4 (1-dim): o = 1, a = (0.75, 0.25),
  // errors 0.75/0.25 * |1 - 0| = 3 and 0.25/0.75 * |1 - 4| = 1: the heavier token stays.
  const std::vector<double> a = {0.75, 0.25};
  const double o = a[0] * 0 + a[1] * 4;
  CHECK(a[0] / (1 - a[0]) * std::abs(o - 0) == doctest::Approx(3));
  CHECK(a[1] / (1 - a[1]) * std::abs(o - 4) == doctest::Approx(1));
  CHECK_THROWS_WITH_AS(make_rule("caote(knorm)"), doctest::Contains("does not score attention"), Error);
  CHECK_THROWS_WITH_AS(make_rule("caote(ada(snapkv))"), doctest::Contains("wraps a scorer or pyramid"), Error);
  CHECK_THROWS_WITH_AS(make_rule("caote(h2o(variant=stepwise))"), doctest::Contains("per-token scores"), Error);
  CHECK_NOTHROW(make_rule("caote(pyramid(snapkv))"));
  CHECK_NOTHROW(make_rule("chunk(caote(snapkv))"));
  CHECK_THROWS_WITH_AS(make_rule("dropkv(kernel=4)"), doctest::Contains("must be odd"), Error);
}

TEST_CASE("caote, dropkv and defensive(dropkv) on a hand-made layer: zero keys make attention uniform, closed forms") {
  // Every key zero: each query at position t attends 1/(t+1) to every token of [0, t]. Values: v_j
  // = (j mod 3, 1) in the first two channels, 0 elsewhere. Then, with w window queries at
  // positions t_i = n_c - w + i and m = n_c - w prefix tokens:
  //   dropkv (kernel 1):   s_j = sum_i (p_i / (1 - p_i + eps))^2 ||v_j - o_i||^2, p_i = 1/(t_i+1),
  //                        o_i = the mean of v over [0, t_i];
  //   caote(snapkv):       SnapKV's scores are equal for every prefix token, so a_j = 1/m and
  //                        s_j = ||o - v_j|| / (m - 1), o = the mean of v over the prefix.
  auto Lp = synthetic_test_layer(4, 2, 1, 99);
  TestLayer& L = *Lp;
  LayerData& d = L.data;
  std::fill(d.k.begin(), d.k.end(), 0.0f);
  std::fill(d.v.begin(), d.v.end(), 0.0f);
  for (int g = 0; g < d.num_kv_heads; ++g)
    for (i64 j = 0; j < d.seq_len; ++j) {
      d.v[(g * d.seq_len + j) * d.head_dim] = static_cast<float>(j % 3);
      d.v[(g * d.seq_len + j) * d.head_dim + 1] = 1.0f;
    }
  L.cache = std::make_unique<LayerCache>(L.meta, L.data, L.n_c, L.eval_rows);
  const i64 w = 16, m = L.n_c - w;
  auto vj = [](i64 j) { return static_cast<double>(j % 3); };  // channel 1 is 1 everywhere: no move
  {
    // dropkv sums the window's moves; defensive(dropkv) (rules doc 2.24; kernel 1, no prior floor)
    // takes their largest, max_i (p_i / (1 - p_i + eps))^2 (v_j - o_i)^2.
    std::vector<double> want(m, 0.0), worst(m, 0.0);
    for (i64 i = 0; i < w; ++i) {
      const i64 t = m + i;
      double o = 0;
      for (i64 j = 0; j <= t; ++j) o += vj(j) / static_cast<double>(t + 1);
      const double p = 1.0 / static_cast<double>(t + 1), r = p / (1 - p + 1e-6);
      for (i64 j = 0; j < m; ++j) {
        want[j] += r * r * (vj(j) - o) * (vj(j) - o);
        worst[j] = std::max(worst[j], r * r * (vj(j) - o) * (vj(j) - o));
      }
    }
    const UnitScores s =
        dynamic_cast<const ScoredRule&>(*make_rule("dropkv(window=16,kernel=1,gqa=mean)")).scores(L.input());
    const UnitScores d = dynamic_cast<const ScoredRule&>(
                             *make_rule("defensive(dropkv(window=16,kernel=1),kernel=1,prior=false)"))
                             .scores(L.input());
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < m; ++j) {
        CHECK(s.unit(u)[j] == doctest::Approx(want[j]).epsilon(1e-4));
        CHECK(d.unit(u)[j] == doctest::Approx(worst[j]).epsilon(1e-4));
      }
  }
  {
    double o = 0;
    for (i64 j = 0; j < m; ++j) o += vj(j) / static_cast<double>(m);
    const UnitScores s = dynamic_cast<const ScoredRule&>(*make_rule("caote(snapkv(window=16,kernel=7,pool=max))"))
                             .scores(L.input());
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < m; ++j)
        CHECK(s.unit(u)[j] == doctest::Approx(std::abs(o - vj(j)) / static_cast<double>(m - 1)).epsilon(1e-4));
  }
}
