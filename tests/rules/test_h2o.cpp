// H2O (rules doc 2.4): float64 brute-force oracles for the three variants, a crafted example where
// the kvpress normalisation changes the ranking, step-wise cache invariants, input errors.
#include "test_h2o_fixture.h"

#include "core/error.h"
#include "rules/budget.h"

using namespace kvsim;
using namespace kvsim::test_rules_more;

namespace {

// colsum[h][j] = sum_{t=j}^{n-1} a^h_{t,j}, causal softmax in float64.
std::vector<std::vector<double>> oracle_colsum(const Layer& L, i64 n) {
  const int H = L.data.num_heads, d = L.data.head_dim;
  std::vector<std::vector<double>> col(H, std::vector<double>(n, 0.0));
  for (int h = 0; h < H; ++h)
    for (i64 t = 0; t < n; ++t) {
      std::vector<double> logit(t + 1);
      for (i64 j = 0; j <= t; ++j) {
        double s = 0;
        for (int c = 0; c < d; ++c) s += L.q(h, t, c) * L.k(h / L.G(), j, c);
        logit[j] = s * L.meta.attn_scale;
      }
      const auto a = softmax(logit);
      for (i64 j = 0; j <= t; ++j) col[h][j] += a[j];
    }
  return col;
}

// Reduce per-head rows into units: "mean"/"max"/"sum" per KV head, or "query".
std::vector<std::vector<double>> oracle_reduce(const std::vector<std::vector<double>>& x, int G,
                                               const std::string& gqa) {
  if (gqa == "query") return x;
  std::vector<std::vector<double>> out;
  for (std::size_t g = 0; g * G < x.size(); ++g) {
    std::vector<double> r = x[g * G];
    for (int k = 1; k < G; ++k)
      for (std::size_t j = 0; j < r.size(); ++j)
        r[j] = gqa == "max" ? std::max(r[j], x[g * G + k][j]) : r[j] + x[g * G + k][j];
    if (gqa == "mean")
      for (double& v : r) v /= G;
    out.push_back(r);
  }
  return out;
}

void check_one_shot(const Layer& L, const std::string& variant, const std::string& gqa, i64 window, bool tolerant) {
  const i64 n = L.n_c;
  auto col = oracle_colsum(L, n);
  if (variant == "kvpress")
    for (auto& row : col)
      for (i64 j = 0; j < n; ++j) row[j] /= static_cast<double>(n - j);
  const auto want = oracle_reduce(col, L.G(), gqa);
  const std::string spec = "h2o(variant=" + variant + ",window=" + std::to_string(window) + ",gqa=" + gqa + ")";
  const RuleInput in = L.input();
  const UnitScores s = scores_of(spec, in);
  REQUIRE(s.units == static_cast<int>(want.size()));
  std::vector<std::uint8_t> protect(n, 0);
  if (variant == "factory")
    for (i64 j = std::max<i64>(0, n - window); j < n; ++j) protect[j] = 1;
  for (int u = 0; u < s.units; ++u) {
    std::vector<double> w_unprot = want[u];
    for (i64 j = 0; j < n; ++j)
      if (protect[j]) w_unprot[j] = 0;
    std::vector<float> got(s.unit(u), s.unit(u) + n);
    for (i64 j = 0; j < n; ++j)
      if (protect[j]) got[j] = 0;
    check_close(got.data(), w_unprot, 1e-5);
  }
  const std::vector<Budget> budgets = {Budget::parse("0.3"), Budget::parse(std::to_string(window + 3))};
  const auto sels = rule(spec)->select(in, budgets);
  for (std::size_t b = 0; b < budgets.size(); ++b)
    for (int u = 0; u < s.units; ++u)
      check_kept(sels[b].unit_mask(u), oracle_keep(want[u], budgets[b].tokens_for(n), protect), want[u], tolerant);
}

}  // namespace

TEST_CASE("h2o kvpress and factory: scores and kept sets equal the float64 oracle (G = 1, 2, 4)") {
  for (int G : {1, 2, 4}) {
    const Layer L = make_layer(4 * G / (G == 4 ? 2 : 1), 4 / (G == 4 ? 2 : 1), 8, 70, 60, 11 + G);
    REQUIRE(L.G() == G);
    for (const std::string gqa : {"mean", "max", "sum", "query"}) {
      CAPTURE(G);
      CAPTURE(gqa);
      check_one_shot(L, "kvpress", gqa, 8, false);
      check_one_shot(L, "factory", gqa, 5, false);
    }
  }
}

TEST_CASE("h2o: kvpress normalisation and factory raw sums rank a crafted example differently") {
  // 1 head, d = 2, n_c = 8. Queries 0..6 are zero (uniform attention); query 7 points at key 7
  // only. Raw column sums: token 0 = H_7 = 1 + 1/2 + ... + 1/7 = 2.593 (+ ~0) > token 7 ~ 1;
  // kvpress divides by the queries that see each key: token 0 -> 2.593 / 8 = 0.324, token 7 -> ~1.
  Layer L = make_layer(1, 1, 2, 8, 8, 1);
  std::fill(L.data.q.begin(), L.data.q.end(), 0.0f);
  std::fill(L.data.k.begin(), L.data.k.end(), 0.0f);
  L.data.k[7 * 2] = 1.0f;
  L.data.q[7 * 2] = 40.0f;  // logit 40/sqrt(2) = 28.3: a_{7,7} = 1 - 7e-13
  const RuleInput in = L.input();
  const UnitScores raw = scores_of("h2o(variant=factory,window=0)", in);
  CHECK(raw.unit(0)[0] == doctest::Approx(1 + 1 / 2. + 1 / 3. + 1 / 4. + 1 / 5. + 1 / 6. + 1 / 7.).epsilon(1e-6));
  CHECK(raw.unit(0)[7] == doctest::Approx(1.0).epsilon(1e-6));
  const UnitScores norm = scores_of("h2o(variant=kvpress)", in);
  CHECK(norm.unit(0)[0] == doctest::Approx(2.592857142857143 / 8).epsilon(1e-6));
  CHECK(norm.unit(0)[7] == doctest::Approx(1.0).epsilon(1e-6));
  const std::vector<Budget> one = {Budget::parse("1")};
  const auto f = rule("h2o(variant=factory,window=0)")->select(in, one);
  const auto k = rule("h2o(variant=kvpress)")->select(in, one);
  CHECK(f[0].unit_mask(0)[0] == 1);
  CHECK(f[0].kept_count(0) == 1);
  CHECK(k[0].unit_mask(0)[7] == 1);
  CHECK(k[0].kept_count(0) == 1);
}

namespace {

// Independent float64 simulation of the step-wise H2O cache (rules doc 2.4.3, real-drop accounting).
struct StepOracle {
  std::vector<std::vector<std::uint8_t>> kept;                   // [unit][n_c]
  std::vector<std::vector<std::vector<std::uint8_t>>> per_query;  // [unit][qi][t+1]
};

StepOracle oracle_stepwise(const Layer& L, const std::string& gqa, i64 heavy, i64 recent) {
  const i64 n_c = L.n_c, cap = std::max<i64>(1, heavy + recent);
  const int G = L.G(), d = L.data.head_dim;
  const auto units0 = oracle_reduce(oracle_colsum(L, n_c), G, gqa);
  const int units = static_cast<int>(units0.size()), nh = gqa == "query" ? 1 : G;
  StepOracle out;
  auto best = [](const std::vector<i64>& cand, const std::vector<double>& s, i64 k) {
    std::vector<i64> c = cand;
    std::stable_sort(c.begin(), c.end(), [&](i64 a, i64 b) { return s[a] > s[b]; });
    if (k < static_cast<i64>(c.size())) c.resize(std::max<i64>(0, k));
    std::sort(c.begin(), c.end());
    return c;
  };
  for (int u = 0; u < units; ++u) {
    std::vector<double> s(L.data.seq_len, 0.0);
    std::copy(units0[u].begin(), units0[u].end(), s.begin());
    std::vector<i64> present;
    std::vector<i64> older;
    const i64 ws0 = n_c <= cap ? 0 : n_c - std::min(recent, cap);
    for (i64 j = 0; j < ws0; ++j) older.push_back(j);
    present = n_c <= cap ? older : best(older, s, cap - (n_c - ws0));
    for (i64 j = ws0; j < n_c; ++j) present.push_back(j);
    std::vector<std::uint8_t> km(n_c, 0);
    for (i64 j : present) km[j] = 1;
    out.kept.push_back(km);
    out.per_query.emplace_back();
    i64 next = n_c;
    for (i64 row : L.eval_rows) {
      const i64 t = L.meta.q_pos[row];
      for (; next <= t; ++next) present.push_back(next);
      const i64 ws = std::max<i64>(0, t - std::max<i64>(recent, 1) + 1);
      std::vector<i64> old, win;
      for (i64 j : present) (j < ws ? old : win).push_back(j);
      std::vector<i64> mask = best(old, s, cap - static_cast<i64>(win.size()));
      mask.insert(mask.end(), win.begin(), win.end());
      std::vector<double> add(mask.size(), 0.0);
      for (int k = 0; k < nh; ++k) {
        const int h = gqa == "query" ? u : u * G + k;
        std::vector<double> logit;
        for (i64 j : mask) {
          double z = 0;
          for (int c = 0; c < d; ++c) z += L.q(h, row, c) * L.k(h / G, j, c);
          logit.push_back(z * L.meta.attn_scale);
        }
        const auto a = softmax(logit);
        for (std::size_t i = 0; i < a.size(); ++i)
          add[i] = gqa == "max" ? (k == 0 ? a[i] : std::max(add[i], a[i])) : add[i] + a[i] / (gqa == "mean" ? nh : 1);
      }
      for (std::size_t i = 0; i < mask.size(); ++i) s[mask[i]] += add[i];
      std::vector<std::uint8_t> qm(t + 1, 0);
      for (i64 j : mask) qm[j] = 1;
      out.per_query[u].push_back(qm);
      present = mask;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("h2o stepwise: per-query masks equal the float64 simulation; caches never exceed heavy + recent") {
  for (int G : {1, 2, 4}) {
    const Layer L = make_layer(2 * G, 2, 8, 64, 40, 77 + G);
    for (const std::string gqa : {"query", "mean", "max"}) {
      for (const auto& [heavy, recent, budget] :
           std::vector<std::tuple<std::string, std::string, std::string>>{{"0.5", "0.5", "12"}, {"0.75", "0.25", "9"},
                                                                          {"1", "0", "6"}, {"0.1", "0.1", "1.0"}}) {
        CAPTURE(G);
        CAPTURE(gqa);
        CAPTURE(heavy);
        CAPTURE(budget);
        const Budget B = Budget::parse(budget);
        const i64 N = B.tokens_for(L.n_c);
        const i64 cap = static_cast<i64>((std::stod(heavy) + std::stod(recent)) * N + 1e-9);
        const i64 rec = std::min(cap, static_cast<i64>(std::stod(recent) * N + 1e-9));
        const auto sel = rule("h2o(variant=stepwise,heavy=" + heavy + ",recent=" + recent + ",gqa=" + gqa + ")")
                             ->select(L.input(), {B});
        const StepOracle want = oracle_stepwise(L, gqa, cap - rec, rec);
        const i64 n_eval = static_cast<i64>(L.eval_rows.size());
        REQUIRE(sel[0].per_query.size() == static_cast<std::size_t>(sel[0].units * n_eval));
        for (int u = 0; u < sel[0].units; ++u) {
          CHECK(std::equal(want.kept[u].begin(), want.kept[u].end(), sel[0].unit_mask(u)));
          for (i64 qi = 0; qi < n_eval; ++qi) {
            const auto& m = sel[0].per_query[u * n_eval + qi];
            CHECK(m == want.per_query[u][qi]);
            const i64 t = L.meta.q_pos[L.eval_rows[qi]];
            REQUIRE(static_cast<i64>(m.size()) == t + 1);
            CHECK(m[t] == 1);  // the current token always attends to itself
            CHECK(std::count(m.begin(), m.end(), 1) <= std::max<i64>(1, cap));
          }
        }
      }
    }
  }
}

TEST_CASE("h2o: a trace without every prompt query is a clear error") {
  Layer L = make_layer(2, 1, 4, 20, 16, 5);
  // Drop position 3 from /q_pos (and its rows).
  std::vector<i64> keep;
  for (i64 r = 0; r < 20; ++r)
    if (r != 3) keep.push_back(r);
  avec<float> q(2 * 19 * 4);
  for (int h = 0; h < 2; ++h)
    for (std::size_t i = 0; i < keep.size(); ++i)
      std::copy_n(L.data.q_row(h, keep[i]), 4, q.data() + (h * 19 + i) * 4);
  L.data.q = q;
  L.data.num_q = 19;
  L.meta.q_pos.erase(L.meta.q_pos.begin() + 3);
  L.eval_rows.clear();
  for (i64 r = 15; r < 19; ++r) L.eval_rows.push_back(r);
  for (const std::string v : {"kvpress", "factory", "stepwise"}) {
    try {
      rule("h2o(variant=" + v + ")")->select(L.input(), {Budget::parse("4")});
      FAIL("no error");
    } catch (const Error& e) {
      const std::string msg = e.what();
      CHECK(msg.find("synthetic: q_pos: h2o needs the stored queries of positions [0, 16)") != std::string::npos);
      CHECK(msg.find("position 3 is missing") != std::string::npos);
    }
  }
}

TEST_CASE("h2o on the sample trace: kvpress/factory oracle, step-wise invariants") {
  if (!have_sample_trace()) {
    MESSAGE("traces/niah_stories260k.h5 not present: skipped");
    return;
  }
  const Layer L = load_sample_layer(3);
  check_one_shot(L, "kvpress", "mean", 8, true);
  check_one_shot(L, "factory", "query", 8, true);
  const auto sel = rule("h2o(variant=stepwise)")->select(L.input(), {Budget::parse("0.1")});
  const i64 N = Budget::parse("0.1").tokens_for(L.n_c);
  for (const auto& m : sel[0].per_query) CHECK(std::count(m.begin(), m.end(), 1) <= N);
  for (int u = 0; u < sel[0].units; ++u) CHECK(sel[0].kept_count(u) == N);
}

TEST_CASE("rules-more: canonical specs rebuild themselves; bad parameters are clear errors") {
  for (const std::string spec :
       {"h2o", "h2o(variant=factory,window=16,gqa=max)", "h2o(variant=stepwise,heavy=0.1,recent=0.1)", "tova",
        "tova(variant=stepwise)", "keydiff", "keydiff(block=0,anchor=raw,recent=0.25)", "think(keydiff,ratio=0.25)",
        "expected(eps=0.01,gqa=query)", "quest(page=32,gqa=mean)"}) {
    CAPTURE(spec);
    const std::string canon = rule(spec)->spec();
    CHECK(rule(canon)->spec() == canon);
  }
  CHECK(rule("h2o(variant=stepwise)")->spec() ==
        "h2o(variant=stepwise,window=8,heavy=0.5,recent=0.5,gqa=query)");
  CHECK_THROWS_WITH_AS(rule("h2o(heavy=0.7,recent=0.5)"), doctest::Contains("heavy + recent must not exceed 1"),
                       Error);
  CHECK_THROWS_WITH_AS(rule("tova(variant=sliding)"), doctest::Contains("'sliding' is not one of"), Error);
  CHECK_THROWS_WITH_AS(rule("keydiff(anchor=mean)"), doctest::Contains("anchor"), Error);
  CHECK_THROWS_WITH_AS(rule("quest(page=0)"), doctest::Contains("page"), Error);
  CHECK_THROWS_AS(rule("expected(snapkv)"), Error);  // takes no base rule
}
