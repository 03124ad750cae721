// oracle_greedy (rules doc 2.19): the exact descent (step=0) equals a float64 brute force that
// recomputes the layer objective for every candidate; the objective is the replay's own pert_l2;
// budgets of one call are nested stops; on a real layer its objective beats the other rules'.
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "attention/perturbation.h"
#include "core/error.h"
#include "rules/factory.h"
#include "rules_reference.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

std::unique_ptr<TestLayer> small_layer(bool o_proj, std::uint64_t seed) {
  SynthOptions o;
  o.num_layers = 3;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.head_dim = 8;
  o.hidden_size = 24;
  o.seq_len = 60;
  o.question_len = 4;
  o.gen_len = 4;
  o.window = 8;
  o.num_sinks = 2;
  o.needle_len = 4;
  o.o_proj = o_proj;
  o.seed = seed;
  o.heavy_hitter_rate = 0.1;
  return synthetic_test_layer(o, 1);
}

Masks masks_of(const Selection& s) {
  Masks m(s.units);
  for (int u = 0; u < s.units; ++u) m[u].assign(s.unit_mask(u), s.unit_mask(u) + s.n_c);
  return m;
}

i64 differences(const Masks& a, const Masks& b) {
  i64 n = 0;
  for (std::size_t u = 0; u < a.size(); ++u)
    for (std::size_t j = 0; j < a[u].size(); ++j) n += a[u][j] != b[u][j];
  return n;
}

// Sum over evaluation queries of the replay's layer pert_l2, squared.
double measured_objective(const TestLayer& L, const Selection& s) {
  LayerReference ref(*L.cache, QuerySet::eval, NormKind::l2);
  const PerturbationResult r = measure_perturbation(*L.cache, ref, s);
  double J = 0;
  for (double x : r.layer_l2) J += x * x;
  return J;
}

}  // namespace

TEST_CASE("oracle_greedy(step=0) is the exact greedy descent of a float64 brute force") {
  for (const bool o_proj : {true, false}) {
    CAPTURE(o_proj);
    const auto Lp = small_layer(o_proj, 31 + o_proj);
    const TestLayer& L = *Lp;
    for (const std::string gqa : {"kv", "query"}) {
      for (const std::string alloc : {"layer", "head"}) {
        CAPTURE(gqa);
        CAPTURE(alloc);
        auto rule = make_rule("oracle_greedy(alloc=" + alloc + ",gqa=" + gqa + ",step=0)");
        const std::vector<Budget> budgets = {Budget::parse("0.5"), Budget::parse("0.2")};
        const auto sels = rule->select(L.input(), budgets);
        REQUIRE(sels.size() == 2);
        for (std::size_t b = 0; b < budgets.size(); ++b) {
          const i64 B = budgets[b].tokens_for(L.n_c);
          const Masks want = ref_greedy(L, gqa == "query", alloc == "head", B);
          const Masks got = masks_of(sels[b]);
          const double J_got = ref_layer_objective(L, got, gqa == "query");
          const double J_want = ref_layer_objective(L, want, gqa == "query");
          CHECK_MESSAGE(differences(got, want) == 0,
                        "budget " << B << ": objective " << J_got << " vs the reference's " << J_want);
          CHECK(J_got == doctest::Approx(J_want).epsilon(1e-9));
          i64 total = 0;
          for (int u = 0; u < sels[b].units; ++u) {
            total += sels[b].kept_count(u);
            if (alloc == "head") CHECK(sels[b].kept_count(u) == B);
          }
          CHECK(total == B * sels[b].units);
          // The objective is the replay's measured pert_l2 (squared, summed over the queries).
          CHECK(measured_objective(L, sels[b]) == doctest::Approx(J_got).epsilon(1e-5));
        }
        // Nested stops of one descent (alloc=layer), or independent descents (alloc=head): a
        // budget's set is the same whatever other budgets the call asks for.
        const auto alone = rule->select(L.input(), {budgets[1]});
        CHECK(alone[0].kept == sels[1].kept);
      }
    }
  }
}

TEST_CASE("oracle_greedy: batched rounds, nested stops, lower objective than the other rules on a real layer") {
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  std::unique_ptr<TestLayer> Lp = std::filesystem::exists(trace) ? trace_test_layer(trace, 2)
                                                                  : synthetic_test_layer(8, 2, 2, 41);
  const TestLayer& L = *Lp;
  const std::vector<Budget> budgets = {Budget::parse("0.3"), Budget::parse("0.1")};
  auto greedy = make_rule("oracle_greedy");
  CHECK(greedy->spec() == "oracle_greedy(alloc=layer,gqa=kv,step=0.02)");
  const auto g = greedy->select(L.input(), budgets);
  // A stop's set is a prefix of the same descent: the smaller budget's set inside the larger's.
  for (std::size_t k = 0; k < g[1].kept.size(); ++k) CHECK(g[1].kept[k] <= g[0].kept[k]);
  const auto alone = greedy->select(L.input(), {budgets[1]});
  CHECK(alone[0].kept == g[1].kept);
  for (const std::string other : {"oracle", "snapkv", "tova", "critical(snapkv)", "keydiff"}) {
    CAPTURE(other);
    const auto s = make_rule(other)->select(L.input(), budgets);
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      const double mine = ref_layer_objective(L, masks_of(g[b]), false);
      const double theirs = ref_layer_objective(L, masks_of(s[b]), s[b].mode == GqaMode::query);
      CHECK_MESSAGE(mine <= theirs, "budget " << b << ": greedy " << mine << " vs " << theirs);
    }
  }
}

TEST_CASE("oracle_greedy: parameters checked") {
  CHECK_THROWS_AS(make_rule("oracle_greedy(step=0.9)"), Error);
  CHECK_THROWS_AS(make_rule("oracle_greedy(alloc=pyramid)"), Error);
  CHECK_THROWS_AS(make_rule("oracle_greedy(gqa=mean)"), Error);
  CHECK(make_rule("oracle_greedy(alloc=head,gqa=query,step=0)")->spec() == "oracle_greedy(alloc=head,gqa=query,step=0)");
}
