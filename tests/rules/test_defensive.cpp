// defensive (rules doc 2.24): DefensiveKV's worst-case aggregation against its float64 reference
// on synthetic layers (G = 1, 2, 4) and the stories260K NIAH trace, gqa max/mean/query, with and
// without the prior floor; kept sets equal except near-ties of the reference's cut.
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

TEST_CASE("defensive equals its float64 reference") {
  std::vector<std::unique_ptr<TestLayer>> layers;
  layers.push_back(synthetic_test_layer(4, 4, 1, 81));
  layers.push_back(synthetic_test_layer(4, 2, 2, 82));
  layers.push_back(synthetic_test_layer(8, 2, 3, 83));
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (std::filesystem::exists(trace)) layers.push_back(trace_test_layer(trace, 1));
  for (const auto& Lp : layers) {
    const TestLayer& L = *Lp;
    for (const std::string gqa : {"max", "mean", "query"})
      for (const bool prior : {true, false}) {
        const std::string spec = "defensive(window=16,kernel=5,gqa=" + gqa + ",prior=" + (prior ? "true" : "false") + ")";
        CAPTURE(spec);
        auto rule = make_rule(spec);
        const Mat ref = ref_defensive(L, 16, 5, gqa, prior);
        const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(L.input());
        CHECK(s.n_protected == 16);
        double worst = 0;
        for (int u = 0; u < s.units; ++u) {
          double top = 0;
          for (double x : ref[u]) top = std::max(top, x);
          for (std::size_t j = 0; j < ref[u].size(); ++j)
            if (ref[u][j] >= 1e-6 * top) worst = std::max(worst, std::abs(s.unit(u)[j] - ref[u][j]) / ref[u][j]);
        }
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
