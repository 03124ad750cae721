// Derived report numbers on hand-made metric rows with hand-computed answers.
#include <doctest/doctest.h>

#include "report/paper_claims.h"

using namespace kvsim::report;

namespace {

MetricRow row(const std::string& rule, const std::string& budget, int layer, int head, double pert, double f,
              double b_ada, double b_crit, double kept = 10) {
  MetricRow r;
  r.rule = rule;
  r.budget = budget;
  r.eval = "queries";
  r.layer = layer;
  r.head = head;
  r.pert_l1 = pert;
  r.retained_mass = f;
  r.bound_ada = b_ada;
  r.bound_critical = b_crit;
  r.kept_tokens = kept;
  r.budget_tokens = 10;
  r.n_queries = 4;
  return r;
}

ReplayOutput two_layer_output() {
  ReplayOutput o;
  o.dir = "fixture";
  o.eval = "queries";
  o.layers = {0, 1};
  o.heads = {0, 1};
  const std::string base = "snapkv(window=4)", crit = "critical(snapkv(window=4),alpha=0.5)",
                    ada = "ada(snapkv(window=4),alpha=0.2)";
  o.rules = {base, crit, ada};
  o.budgets = {"0.1"};
  // base: heads (layer 0) 1.0, 2.0 ; (layer 1) 3.0, 4.0 ; layer rows 2.5, 6.0
  for (auto [l, h, p, f] : std::vector<std::tuple<int, int, double, double>>{
           {0, 0, 1.0, 0.9}, {0, 1, 2.0, 0.8}, {1, 0, 3.0, 0.7}, {1, 1, 4.0, 0.6}, {0, -1, 2.5, 0.85}, {1, -1, 6.0, 0.65}})
    o.rows.push_back(row(base, "0.1", l, h, p, f, 4 * p, 2 * p));
  // critical: wins on (0,0), ties on (0,1), wins on (1,0), loses on (1,1); layer rows 2.0, 5.5
  for (auto [l, h, p] : std::vector<std::tuple<int, int, double>>{
           {0, 0, 0.5}, {0, 1, 2.0}, {1, 0, 2.0}, {1, 1, 4.5}, {0, -1, 2.0}, {1, -1, 5.5}})
    o.rows.push_back(row(crit, "0.1", l, h, p, 0.8, 4 * p, 2 * p));
  // ada: heads' F sum to 1.8 (layer 0) and 1.5 (layer 1); kept tokens 6 and 14
  for (auto [l, h, p, f, k] : std::vector<std::tuple<int, int, double, double, double>>{
           {0, 0, 1.0, 0.95, 6}, {0, 1, 1.0, 0.85, 14}, {1, 0, 2.0, 0.8, 6}, {1, 1, 2.0, 0.7, 14},
           {0, -1, 2.0, 0.9, 10}, {1, -1, 4.0, 0.75, 10}})
    o.rows.push_back(row(ada, "0.1", l, h, p, f, 3 * p, 2 * p, k));
  // A window row that must be ignored.
  MetricRow w = row(base, "0.1", 0, 0, 100, 0.1, 1, 1);
  w.eval = "window";
  o.rows.push_back(w);
  return o;
}

}  // namespace

TEST_CASE("wrapped_base takes the first top-level argument") {
  CHECK(wrapped_base("critical(ada(snapkv(window=32,kernel=7),alpha=0.2),alpha=0.5)", "critical") ==
        "ada(snapkv(window=32,kernel=7),alpha=0.2)");
  CHECK(wrapped_base("critical(snapkv)", "critical") == "snapkv");
  CHECK(wrapped_base("ada(snapkv(window=8),variant=B)", "ada") == "snapkv(window=8)");
  CHECK(wrapped_base("snapkv(window=8)", "critical") == "");
  CHECK(wrapped_base("criticalx(snapkv)", "critical") == "");
}

TEST_CASE("critical_win_rates: per budget and per layer, with cumulative advantage") {
  const auto w = critical_win_rates(two_layer_output());
  REQUIRE(w.size() == 3);  // total + 2 layers
  CHECK(w[0].layer == -1);
  CHECK(w[0].heads == 4);
  CHECK(w[0].wins == 2);
  CHECK(w[0].ties == 1);
  CHECK(w[0].rate == 0.5);
  CHECK(w[0].pert_base == 8.5);
  CHECK(w[0].pert_rule == 7.5);
  CHECK(w[0].cumulative_advantage == 1.0);
  CHECK(w[1].layer == 0);
  CHECK(w[1].rate == 0.5);
  CHECK(w[1].cumulative_advantage == 0.5);
  CHECK(w[2].layer == 1);
  CHECK(w[2].wins == 1);
  CHECK(w[2].cumulative_advantage == 1.0);
  CHECK(w[0].base == "snapkv(window=4)");
}

TEST_CASE("ada_effects: sum of head F and layer bounds, uniform vs adaptive") {
  const auto e = ada_effects(two_layer_output());
  REQUIRE(e.size() == 2);
  CHECK(e[0].layer == 0);
  CHECK(e[0].sum_f_uniform == doctest::Approx(1.7));
  CHECK(e[0].sum_f_ada == doctest::Approx(1.8));
  CHECK(e[0].bound_uniform == 10.0);  // 4 * 2.5
  CHECK(e[0].bound_ada == 6.0);       // 3 * 2.0
  CHECK(e[1].pert_uniform == 6.0);
  CHECK(e[1].pert_ada == 4.0);
  const auto kept = head_kept_tokens(two_layer_output(), "ada(snapkv(window=4),alpha=0.2)", "0.1");
  CHECK(kept == std::vector<double>{6, 14, 6, 14});
}

TEST_CASE("rule_budget_stats and layer_tightness") {
  const auto o = two_layer_output();
  const auto s = rule_budget_stats(o);
  REQUIRE(s.size() == 3);
  CHECK(s[0].n_layers == 2);
  CHECK(s[0].pert_l1 == 4.25);          // (2.5 + 6) / 2, window row ignored
  CHECK(s[0].retained_mass == doctest::Approx(0.75));
  CHECK(s[0].bound_ada == 17.0);
  const auto t = layer_tightness(o);
  REQUIRE(t.size() == 2);
  // Every head row has bound_critical = 2 * pert -> ratio 0.5 everywhere; Ada: 0.25 (base, crit), 1/3 (ada).
  CHECK(t[0].n_critical == 6);
  CHECK(t[0].median_critical == 0.5);
  CHECK(t[0].max_ada == doctest::Approx(1.0 / 3));
  CHECK(t[0].median_ada == 0.25);
  CHECK(t[0].exceed_critical == 0);
}
