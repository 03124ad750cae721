// TOVA (rules doc 2.5): float64 oracles for the kvpress one-shot and the original step-wise cache;
// one set per layer (every KV head identical).
#include "test_h2o_fixture.h"

#include "rules/budget.h"

using namespace kvsim;
using namespace kvsim::test_rules_more;

namespace {

// mean_h softmax over the listed keys of query row `row`, float64.
std::vector<double> oracle_row(const Layer& L, i64 row, const std::vector<i64>& pos) {
  const int H = L.data.num_heads, d = L.data.head_dim;
  std::vector<double> mean(pos.size(), 0.0);
  for (int h = 0; h < H; ++h) {
    std::vector<double> logit;
    for (i64 j : pos) {
      double z = 0;
      for (int c = 0; c < d; ++c) z += L.q(h, row, c) * L.k(h / L.G(), j, c);
      logit.push_back(z * L.meta.attn_scale);
    }
    const auto a = softmax(logit);
    for (std::size_t i = 0; i < pos.size(); ++i) mean[i] += a[i] / H;
  }
  return mean;
}

void check_oneshot(const Layer& L, bool tolerant) {
  const i64 n = L.n_c;
  std::vector<i64> all(n);
  std::iota(all.begin(), all.end(), 0);
  std::vector<double> want = oracle_row(L, n - 1, all);
  want[n - 1] = 0;  // protected; its score is not used
  const UnitScores s = scores_of("tova", L.input());
  REQUIRE(s.units == L.data.num_kv_heads);
  std::vector<std::uint8_t> protect(n, 0);
  protect[n - 1] = 1;
  for (int u = 0; u < s.units; ++u) {
    std::vector<float> got(s.unit(u), s.unit(u) + n);
    got[n - 1] = 0;
    check_close(got.data(), want, 1e-5);
  }
  const std::vector<Budget> budgets = {Budget::parse("0.25"), Budget::parse("5")};
  const auto sels = rule("tova(variant=oneshot)")->select(L.input(), budgets);
  for (std::size_t b = 0; b < budgets.size(); ++b) {
    const auto keep = oracle_keep(want, budgets[b].tokens_for(n), protect);
    for (int u = 0; u < sels[b].units; ++u) {
      check_kept(sels[b].unit_mask(u), keep, want, tolerant);
      CHECK(std::equal(sels[b].unit_mask(0), sels[b].unit_mask(0) + n, sels[b].unit_mask(u)));
    }
  }
}

}  // namespace

TEST_CASE("tova oneshot: scores and kept sets equal the float64 oracle; one set per layer") {
  for (int G : {1, 2, 4}) {
    CAPTURE(G);
    check_oneshot(make_layer(2 * G, 2, 8, 60, 50, 300 + G, 2.5), false);
  }
}

TEST_CASE("tova stepwise: masks equal the float64 fixed-cache simulation") {
  for (int G : {1, 2, 4}) {
    const Layer L = make_layer(2 * G, 2, 8, 56, 40, 400 + G, 2.5);
    for (const std::string budget : {"6", "0.3", "39"}) {
      CAPTURE(G);
      CAPTURE(budget);
      const i64 N = Budget::parse(budget).tokens_for(L.n_c);
      // Oracle: prefill row n_c - 1 over [0, n_c) (own key competes), then one row per step.
      std::vector<i64> present(L.n_c);
      std::iota(present.begin(), present.end(), 0);
      auto shrink = [&](const std::vector<double>& score) {
        if (static_cast<i64>(present.size()) <= N) return;
        const auto keep = oracle_keep(score, N);
        std::vector<i64> next;
        for (std::size_t i = 0; i < present.size(); ++i)
          if (keep[i]) next.push_back(present[i]);
        present = next;
      };
      shrink(oracle_row(L, L.n_c - 1, present));
      const auto sel = rule("tova(variant=stepwise)")->select(L.input(), {Budget::parse(budget)});
      const i64 n_eval = static_cast<i64>(L.eval_rows.size());
      for (int u = 0; u < sel[0].units; ++u)
        for (i64 j : present) CHECK(sel[0].unit_mask(u)[j] == 1);
      CHECK(sel[0].kept_count(0) == static_cast<i64>(present.size()));
      i64 next = L.n_c;
      for (i64 qi = 0; qi < n_eval; ++qi) {
        const i64 t = L.meta.q_pos[L.eval_rows[qi]];
        for (; next <= t; ++next) present.push_back(next);
        std::vector<std::uint8_t> want(t + 1, 0);
        for (i64 j : present) want[j] = 1;
        for (int u = 0; u < sel[0].units; ++u) {
          const auto& m = sel[0].per_query[u * n_eval + qi];
          CHECK(m == want);
          CHECK(std::count(m.begin(), m.end(), 1) <= N + 1);  // the cache plus the current token
        }
        shrink(oracle_row(L, L.eval_rows[qi], present));
      }
    }
  }
}

TEST_CASE("tova on the sample trace: oneshot oracle, step-wise cache size") {
  if (!have_sample_trace()) {
    MESSAGE("traces/niah_stories260k.h5 not present: skipped");
    return;
  }
  const Layer L = load_sample_layer(2);
  check_oneshot(L, true);
  const auto sel = rule("tova(variant=stepwise)")->select(L.input(), {Budget::parse("64")});
  for (const auto& m : sel[0].per_query) CHECK(std::count(m.begin(), m.end(), 1) <= 65);
}
