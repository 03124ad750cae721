// defensive (rules doc 2.24): DefensiveKV's worst-case aggregation against its float64 reference
// on synthetic layers (G = 1, 2, 4) and the stories260K NIAH trace, gqa max/mean/query, with and
// without the prior floor; kept sets equal except near-ties of the reference's cut.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "rules/factory.h"
#include "rules/scored_rule.h"
#include "rules_reference.h"
#include "test_h2o_fixture.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

TEST_CASE("defensive equals its float64 reference") {
  for (const auto& Lp : standard_test_layers(81, 1)) {
    const TestLayer& L = *Lp;
    for (const std::string gqa : {"max", "mean", "query"})
      for (const bool prior : {true, false}) {
        const std::string spec = "defensive(window=16,kernel=5,gqa=" + gqa + ",prior=" + (prior ? "true" : "false") + ")";
        CAPTURE(spec);
        auto rule = make_rule(spec);
        const Mat ref = ref_defensive(L, 16, 5, gqa, prior);
        const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(L.input());
        CHECK(s.n_protected == 16);
        const double worst = worst_relative(s, ref);
        CHECK_MESSAGE(worst <= 1e-4, "worst relative score error " << worst);
        for (const std::string text : {"0.1", "0.3"}) {
          const Budget b = Budget::parse(text);
          const i64 B = b.tokens_for(L.n_c);
          const auto sel = rule->select(L.input(), {b});
          const Masks want = ref_keep_prefix(ref, L.n_c, 16, std::vector<i64>(ref.size(), B));
          i64 bad = 0;
          for (int u = 0; u < sel[0].units; ++u) {
            double cut = INFINITY;
            for (std::size_t j = 0; j < ref[u].size(); ++j)
              if (want[u][j]) cut = std::min(cut, ref[u][j]);
            for (std::size_t j = 0; j < ref[u].size(); ++j)
              bad += sel[0].unit_mask(u)[j] != want[u][j] && std::abs(ref[u][j] - cut) > 1e-4 * cut;
          }
          CHECK_MESSAGE(bad == 0, text << ": " << bad << " kept-set differences beyond near-ties");
        }
      }
  }
  CHECK_THROWS_AS(make_rule("defensive(kernel=4)"), Error);
}

TEST_CASE("defensive(base): the worst case of the base's own per-query rows") {
  auto scores = [](const std::string& spec, const TestLayer& L) {
    return dynamic_cast<const ScoredRule&>(*make_rule(spec)).scores(L.input());
  };
  SUBCASE("defensive(snapkv) is defensive over the same window, to the bit") {
    for (const auto& Lp : standard_test_layers(81, 1))
      for (const std::string gqa : {"max", "mean", "query"}) {
        CAPTURE(gqa);
        const UnitScores a = scores("defensive(window=16,kernel=5,gqa=" + gqa + ")", *Lp);
        const UnitScores b = scores("defensive(snapkv(window=16),kernel=5,gqa=" + gqa + ")", *Lp);
        CHECK(a.score == b.score);
        CHECK(a.protect == b.protect);
      }
  }
  SUBCASE("defensive(dropkv): the worst one-token move over the window, float64 reference") {
    for (const auto& Lp : standard_test_layers(81, 1)) {
      const TestLayer& L = *Lp;
      std::vector<i64> window;
      for (i64 t = L.n_c - 16; t < L.n_c; ++t) window.push_back(t);
      for (const std::string gqa : {"max", "mean"}) {
        CAPTURE(gqa);
        const Mat ref = ref_defensive_of(
            L, window, L.n_c - 16, [&](int h, i64 t) { return ref_dropkv_row(L, h, t, 1e-6); }, 5, gqa, true);
        const UnitScores s = scores("defensive(dropkv(window=16),gqa=" + gqa + ")", L);
        CHECK(s.n_protected == 16);
        // DropKV's moves are differences that can nearly cancel (test_output_error_rules: 1e-3).
        const double worst = worst_relative(s, ref);
        CHECK_MESSAGE(worst <= 1e-3, "worst relative score error " << worst);
        // The mean over the window is a different ranking: the worst case is what is measured.
        const Mat sum = ref_dropkv(L, 16, 1, 1e-6, gqa);
        CHECK(worst_relative(s, sum) > 1e-2);
      }
    }
  }
  SUBCASE("defensive(h2o): the worst case over every prompt query's attention") {
    for (const auto& Lp : synthetic_model(4, 2, 91)) {
      const TestLayer& L = *Lp;
      std::vector<i64> prompt;
      for (i64 t = 0; t < L.n_c; ++t) prompt.push_back(t);
      const Mat ref = ref_defensive_of(
          L, prompt, L.n_c, [&](int h, i64 t) { return ref_softmax_prefix(L, h, t); }, 5, "max", true);
      const UnitScores s = scores("defensive(h2o)", L);
      CHECK(s.n_protected == 0);
      const double worst = worst_relative(s, ref);
      CHECK_MESSAGE(worst <= 1e-4, "worst relative score error " << worst);
      // factory's protected window is not scored.
      CHECK(scores("defensive(h2o(variant=factory,window=8))", L).n_protected == 8);
    }
  }
  CHECK_THROWS_WITH_AS(make_rule("defensive(knorm)"), doctest::Contains("no per-query score rows"), Error);
  CHECK_THROWS_WITH_AS(make_rule("defensive(streaming)"), doctest::Contains("no per-query score rows"), Error);
  CHECK_THROWS_WITH_AS(make_rule("defensive(keydiff)"), doctest::Contains("per-token scores"), Error);
  CHECK_THROWS_WITH_AS(make_rule("defensive(ada(snapkv))"), doctest::Contains("plain scorer"), Error);
  CHECK_THROWS_WITH_AS(make_rule("defensive(h2o(variant=stepwise))"), doctest::Contains("defensive"), Error);
  CHECK_THROWS_AS(make_rule("defensive(snapkv,window=8)"), Error);  // the window is the base's
  CHECK_NOTHROW(make_rule("critical(ada(defensive(snapkv)))"));
  // DropKV's moves are not attention mass: Ada-KV's allocation is refused over them, as over dropkv.
  CHECK_THROWS_WITH_AS(make_rule("ada(defensive(dropkv))"), doctest::Contains("does not score attention"), Error);
}

namespace {

// FFY0/DefensiveKV's scores of one layer for a budget keeping `exact` tokens per KV head
// (kvpress's float), float64 from the press's code: defensive scores (group max, prior floor)
// times the token's share across KV heads of the group-mean ||v W_o^h||_1; the first tokens by
// mean window attention until the cumulative share reaches mass - window_bias (at most
// exact - w of them) and the window at the layer's largest score. [unit][n_c].
Mat ref_defensivekv(const TestLayer& L, i64 w, double mass, double exact, i64* raised) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads, U = d.num_kv_heads;
  const i64 n = L.n_c, m = n - w;
  const Mat def = ref_defensive(L, w, 5, "max", true);
  const Mat nu = ref_value_norms(L, "l1", false);
  Mat ave(U, std::vector<double>(m, 0.0));
  double bias = 0;
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 t = n - w; t < n; ++t) {
      const auto a = ref_softmax_prefix(L, h, t);
      for (i64 j = 0; j < m; ++j) ave[h / G][j] += a[j] / (G * w);
      for (i64 j = std::max<i64>(0, m - w); j < m; ++j) bias += a[j] / (d.num_heads * w);
    }
  Mat s(U, std::vector<double>(n, 0.0));
  double top = 0;
  for (i64 j = 0; j < m; ++j) {
    double total = 0;
    for (int u = 0; u < U; ++u) total += nu[u][j];
    for (int u = 0; u < U; ++u) top = std::max(top, s[u][j] = def[u][j] * nu[u][j] / total);
  }
  const i64 cap = static_cast<i64>(std::floor(exact - w));
  *raised = 0;
  for (int u = 0; u < U; ++u) {
    double sum = 0, cum = 0;
    for (double x : ave[u]) sum += x;
    const std::vector<i64> order = ref_top(ave[u], m);
    i64 count = 0;
    for (i64 i = 0; i < m; ++i)
      if ((cum += ave[u][order[i]] / sum) >= mass - bias) {
        count = i;
        break;
      }
    for (i64 i = 0; i < std::min(count, cap); ++i) s[u][order[i]] = top;
    *raised += std::min(count, cap);
    for (i64 j = m; j < n; ++j) s[u][j] = top;
  }
  return s;
}

// The flattened top `total` of several layers' [unit][token] scores (ties: earlier layer, unit,
// token), and each kept entry's margin over the cut.
std::vector<Masks> ref_flattened(const std::vector<Mat>& layers, i64 total, double* cut) {
  std::vector<std::tuple<double, std::size_t, std::size_t, std::size_t>> e;
  for (std::size_t l = 0; l < layers.size(); ++l)
    for (std::size_t u = 0; u < layers[l].size(); ++u)
      for (std::size_t j = 0; j < layers[l][u].size(); ++j) e.emplace_back(layers[l][u][j], l, u, j);
  std::stable_sort(e.begin(), e.end(), [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  std::vector<Masks> keep;
  for (const Mat& s : layers) keep.emplace_back(s.size(), std::vector<std::uint8_t>(s[0].size(), 0));
  for (i64 k = 0; k < total; ++k) keep[std::get<1>(e[k])][std::get<2>(e[k])][std::get<3>(e[k])] = 1;
  *cut = std::get<0>(e[total - 1]);
  return keep;
}

// Kept-set differences beyond near-ties of the reference's cut.
i64 differences(const std::vector<Masks>& want, const std::vector<Mat>& ref, const std::vector<Selection>& got,
                double cut) {
  i64 bad = 0;
  for (std::size_t l = 0; l < want.size(); ++l)
    for (std::size_t u = 0; u < want[l].size(); ++u)
      for (std::size_t j = 0; j < want[l][u].size(); ++j)
        bad += got[l].unit_mask(static_cast<int>(u))[j] != want[l][u][j] && std::abs(ref[l][u][j] - cut) > 1e-4 * cut;
  return bad;
}

}  // namespace

TEST_CASE("defensivekv equals FFY0/DefensiveKV's presses in float64 (per layer and across layers)") {
  const auto layers = synthetic_model(4, 2, 91);
  const i64 w = 16, n = layers[0]->n_c, U = 2;
  for (const std::string text : {"0.1", "cr=0.6"}) {
    CAPTURE(text);
    const Budget b = Budget::parse(text);
    const double exact = b.exact_tokens(n);
    const auto per_layer_total = [&](i64 items) {
      return b.kind == Budget::Kind::fraction ? static_cast<i64>(std::floor(items * b.value * (1 + 1e-12)))
                                              : static_cast<i64>(static_cast<double>(items) * (1 - b.value));
    };
    std::vector<Mat> ref;
    i64 raised = 0;
    for (const auto& L : layers) {
      i64 r = 0;
      ref.push_back(ref_defensivekv(*L, w, 0.9, exact, &r));
      raised += r;
    }
    CHECK(raised > 0);  // stage 1 raised tokens: the transform is exercised
    // EfficientDefensiveKVPress: one flattened top-k per layer.
    auto rule = make_rule("defensivekv(window=16)");
    for (std::size_t l = 0; l < layers.size(); ++l) {
      double cut = 0;
      const auto want = ref_flattened({ref[l]}, per_layer_total(n * U), &cut);
      const auto got = rule->select(layers[l]->input(), {b});
      CHECK_MESSAGE(differences(want, {ref[l]}, got, cut) == 0, "layer " << l);
    }
    // EfficientLayerDefensiveKVPress: one flattened top-k over every layer, window entries included.
    double cut = 0;
    const auto want = ref_flattened(ref, per_layer_total(n * U * static_cast<i64>(layers.size())), &cut);
    const auto got = planned_select("defensivekv(window=16,alloc=global)", layers, {b});
    CHECK(differences(want, ref, got[0], cut) == 0);
    i64 lo = n * U, hi = 0;
    for (const auto& s : got[0]) {
      lo = std::min<i64>(lo, s.kept_count(0) + s.kept_count(1));
      hi = std::max<i64>(hi, s.kept_count(0) + s.kept_count(1));
    }
    CHECK(hi > lo);  // the layers did not all get the same share
  }
  CHECK_THROWS_WITH_AS(make_rule("defensivekv(window=16)")->select(layers[0]->input(), {Budget::parse("8")}),
                       doctest::Contains("fewer than the 16-token observation window"), Error);
}

TEST_CASE("8.5 defensivekv: with uniform attention the value-norm shares rank the tokens") {
  using namespace kvsim::test_rules_more;
  // 2 KV heads (G = 1), n_c = 5, window w = 1 (position 4), zero queries: every window row is
  // uniform (1/5), so the defensive score is 0.2 for each prefix token 0..3 and snapkv-like rules
  // tie everywhere. The values' L1 norms are [1, 3, 6, 8] in head 0 and [9, 7, 4, 2] in head 1
  // (W_o the identity): shares 0.1 0.3 0.6 0.8 / 0.9 0.7 0.4 0.2, scores s = 0.2 x share =
  // .02 .06 .12 .16 / .18 .14 .08 .04; mass=0 turns stage 1 off (0 - beta < 0: no token counted) and the window
  // is raised to the layer maximum .18. Budget 0.6: the top int(2 x 5 x 0.6) = 6 entries are
  // .18 (h1 window, h1 token 0, h0 window), .16, .14, .12: head 0 keeps {2, 3, 4}, head 1 {0, 1, 4}.
  Layer L = make_layer(2, 2, 2, 6, 5, 1);
  std::fill(L.data.q.begin(), L.data.q.end(), 0.0f);
  std::fill(L.data.v.begin(), L.data.v.end(), 0.0f);
  const float norms[2][6] = {{1, 3, 6, 8, 1, 1}, {9, 7, 4, 2, 1, 1}};
  for (int g = 0; g < 2; ++g)
    for (i64 t = 0; t < 6; ++t) L.data.v[(g * 6 + t) * 2] = norms[g][t];
  // W_o = identity (hidden 4 = H d): ||v W_o^h||_1 = ||v||_1.
  L.meta.has_o_proj = true;
  L.data.o_proj.assign(16, 0.0f);
  for (int e = 0; e < 4; ++e) L.data.o_proj[e * 4 + e] = 1.0f;
  LayerCache cache(L.meta, L.data, L.n_c, L.eval_rows);  // the value norms defensivekv weights by
  RuleInput in = L.input();
  in.cache = &cache;
  const auto kept = rule("defensivekv(window=1,kernel=1,mass=0)")->select(in, {Budget::parse("0.6")});
  REQUIRE(kept.size() == 1);
  const std::vector<std::uint8_t> h0 = {0, 0, 1, 1, 1}, h1 = {1, 1, 0, 0, 1};
  CHECK(std::vector<std::uint8_t>(kept[0].unit_mask(0), kept[0].unit_mask(0) + 5) == h0);
  CHECK(std::vector<std::uint8_t>(kept[0].unit_mask(1), kept[0].unit_mask(1) + 5) == h1);
  // defensive alone: every prefix token scores 0.2 in both heads (the tie the shares break).
  const UnitScores d = scores_of("defensive(window=1,kernel=1)", in);
  for (int g = 0; g < 2; ++g)
    for (i64 j = 0; j < 4; ++j) CHECK(d.unit(g)[j] == doctest::Approx(0.2).epsilon(1e-6));
}
