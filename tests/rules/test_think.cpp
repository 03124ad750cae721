// ThinK (rules doc 2.12): channel scores and pruned channels against a float64 oracle; the base
// rule's token selection passes through unchanged.
#include "test_h2o_fixture.h"

#include "core/error.h"
#include "rules/budget.h"
#include "rules/think.h"

using namespace kvsim;
using namespace kvsim::test_rules_more;

TEST_CASE("think: pruned channels equal the float64 oracle over the base rule's kept keys") {
  for (int G : {1, 2, 4}) {
    const Layer L = make_layer(2 * G, 2, 16, 80, 70, 50 + G);
    for (const std::string ratio : {"0.5", "0.25", "0.3"}) {
      CAPTURE(G);
      CAPTURE(ratio);
      const std::string base = "keydiff(block=0)";
      const std::vector<Budget> budgets = {Budget::parse("20"), Budget::parse("0.8")};
      const auto plain = rule(base)->select(L.input(), budgets);
      const auto th = rule("think(" + base + ",ratio=" + ratio + ",window=8)")->select(L.input(), budgets);
      const int d = 16, n_pruned = static_cast<int>(std::floor(d * std::stod(ratio)));
      for (std::size_t b = 0; b < budgets.size(); ++b) {
        CHECK(th[b].kept == plain[b].kept);
        REQUIRE(th[b].key_channels.size() == static_cast<std::size_t>(2 * d));
        for (int g = 0; g < 2; ++g) {
          std::vector<double> score(d);
          for (int c = 0; c < d; ++c) {
            double qs = 0, ks = 0;
            i64 nk = 0;
            for (int h = g * G; h < (g + 1) * G; ++h)
              for (i64 t = L.n_c - 8; t < L.n_c; ++t) qs += L.q(h, t, c) * L.q(h, t, c) / (8.0 * G);
            for (i64 j = 0; j < L.n_c; ++j)
              if (plain[b].unit_mask(g)[j]) {
                ks += L.k(g, j, c) * L.k(g, j, c);
                ++nk;
              }
            score[c] = qs * ks / nk;
          }
          // Oracle: the n_pruned lowest channels are zeroed.
          std::vector<int> order(d);
          std::iota(order.begin(), order.end(), 0);
          std::stable_sort(order.begin(), order.end(), [&](int a, int b2) { return score[a] < score[b2]; });
          std::vector<std::uint8_t> want(d, 1);
          for (int i = 0; i < n_pruned; ++i) want[order[i]] = 0;
          CHECK(std::equal(want.begin(), want.end(), th[b].key_channels.begin() + g * d));
        }
      }
    }
  }
}

TEST_CASE("think: hand-computed channel scores and tie order") {
  // q^2 means (2, 1, 1, 4) x k^2 means (1, 3, 2, 0.5) = (2, 3, 2, 2): ratio 0.5 prunes two of the
  // three tied channels, the lower ones (0 and 2).
  const std::vector<double> q_sq = {2, 1, 1, 4};
  const std::vector<float> keys = {1, 1, 2, 1, 1, std::sqrt(5.0f), 0, 0};  // two keys, d = 4
  const auto s = think_channel_scores(q_sq, keys.data(), 4, {0, 1});
  CHECK(s[0] == doctest::Approx(2.0));
  CHECK(s[1] == doctest::Approx(3.0));
  CHECK(s[2] == doctest::Approx(2.0));
  CHECK(s[3] == doctest::Approx(2.0));
  CHECK(think_channel_mask(s, 0.5) == std::vector<std::uint8_t>{0, 1, 0, 1});
  CHECK(think_channel_mask(s, 0.0) == std::vector<std::uint8_t>{1, 1, 1, 1});
}

TEST_CASE("think: default base and missing window queries") {
  CHECK(rule("think")->spec().rfind("think(snapkv", 0) == 0);
  Layer L = make_layer(2, 1, 4, 20, 16, 5);
  L.meta.q_pos.assign({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20});
  try {
    rule("think(keydiff,window=4)")->select(L.input(), {Budget::parse("4")});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("q_pos: think needs the stored queries of positions [12, 16)") !=
          std::string::npos);
  }
}
