// Quest (rules doc 2.15): page choice against a float64 oracle written with the max over page
// tokens (sum_c max_j q_c k_jc, equal to the min/max channel bound), page counts, dense layers.
#include "test_h2o_fixture.h"

#include "rules/budget.h"
#include "rules/quest.h"

using namespace kvsim;
using namespace kvsim::test_rules_more;

namespace {

std::vector<std::uint8_t> oracle_mask(const Layer& L, const std::vector<int>& heads, i64 row, i64 t, i64 page,
                                      i64 n_pages_keep, const std::string& op) {
  const int d = L.data.head_dim;
  const i64 n_pages = t / page + 1;
  std::vector<double> u(n_pages, 0.0);
  for (std::size_t k = 0; k < heads.size(); ++k)
    for (i64 p = 0; p < n_pages; ++p) {
      double up = 0;
      for (int c = 0; c < d; ++c) {
        double best = -INFINITY;
        for (i64 j = p * page; j <= std::min(t, p * page + page - 1); ++j)
          best = std::max(best, L.q(heads[k], row, c) * L.k(heads[k] / L.G(), j, c));
        up += best;
      }
      u[p] = k == 0 ? up : op == "max" ? std::max(u[p], up) : u[p] + up;
    }
  if (op == "mean")
    for (double& x : u) x /= static_cast<double>(heads.size());
  const auto keep = oracle_keep(u, n_pages_keep);
  std::vector<std::uint8_t> m(t + 1);
  for (i64 j = 0; j <= t; ++j) m[j] = keep[j / page];
  return m;
}

}  // namespace

TEST_CASE("quest: per-query page masks equal the float64 oracle (query-head and KV-head modes)") {
  for (int G : {1, 2, 4}) {
    const Layer L = make_layer(2 * G, 2, 8, 90, 60, 90 + G);
    for (const std::string gqa : {"query", "mean", "max"})
      for (const auto& [page, budget] : std::vector<std::pair<i64, std::string>>{{16, "32"}, {5, "0.4"}, {4, "1"}}) {
        CAPTURE(G);
        CAPTURE(gqa);
        CAPTURE(page);
        const Budget B = Budget::parse(budget);
        const auto sel = rule("quest(page=" + std::to_string(page) + ",gqa=" + gqa + ")")->select(L.input(), {B});
        const i64 n_eval = static_cast<i64>(L.eval_rows.size());
        REQUIRE(sel[0].per_query.size() == static_cast<std::size_t>(sel[0].units * n_eval));
        CHECK(sel[0].kept_count(0) == L.n_c);  // nothing evicted
        for (int u = 0; u < sel[0].units; ++u)
          for (i64 qi = 0; qi < n_eval; ++qi) {
            const i64 t = L.eval_rows[qi];
            std::vector<int> heads;
            if (gqa == "query") heads = {u};
            else
              for (int h = u * G; h < (u + 1) * G; ++h) heads.push_back(h);
            const i64 n_pages = t / page + 1;
            const i64 K = std::min(std::max<i64>(3, B.tokens_for(L.n_c) / page), n_pages);
            const auto want = oracle_mask(L, heads, L.eval_rows[qi], t, page, K, gqa == "query" ? "sum" : gqa);
            CHECK(sel[0].per_query[u * n_eval + qi] == want);
            // K whole pages, the last one possibly partial.
            const i64 count = std::count(want.begin(), want.end(), 1);
            CHECK(count <= K * page);
            CHECK(count >= (K - 1) * page + 1);
          }
      }
  }
}

TEST_CASE("quest: layers below dense_layers attend densely") {
  const Layer L = make_layer(2, 2, 8, 50, 40, 3);
  RuleInput in = L.input();
  in.layer = 1;
  const auto dense = rule("quest")->select(in, {Budget::parse("16")});
  CHECK(dense[0].per_query.empty());
  CHECK(dense[0].kept_count(0) == 40);
  in.layer = 2;
  CHECK(rule("quest")->select(in, {Budget::parse("16")})[0].per_query.size() == 2 * 10);
  CHECK(rule("quest(dense_layers=0)")->select(in, {Budget::parse("16")})[0].per_query.size() == 2 * 10);
}

TEST_CASE("quest on the sample trace: float64 oracle") {
  if (!have_sample_trace()) {
    MESSAGE("traces/niah_stories260k.h5 not present: skipped");
    return;
  }
  const Layer L = load_sample_layer(4);
  const auto sel = rule("quest")->select(L.input(), {Budget::parse("256")});
  const i64 n_eval = static_cast<i64>(L.eval_rows.size());
  i64 equal = 0;
  for (int h = 0; h < L.data.num_heads; ++h)
    for (i64 qi = 0; qi < n_eval; ++qi) {
      const i64 t = L.meta.q_pos[L.eval_rows[qi]];
      const auto want = oracle_mask(L, {h}, L.eval_rows[qi], t, 16, 16, "sum");
      equal += sel[0].per_query[h * n_eval + qi] == want;
    }
  CHECK(equal == L.data.num_heads * n_eval);
}
