// The README's main job in miniature: every rule of 'all' replays the bundled sample trace.
#include <doctest/doctest.h>

#include <fstream>
#include <set>
#include <sstream>

#include "rules/factory.h"
#include "testutil/testutil.h"

using namespace kvsim;

TEST_CASE("cli: replay --rules all runs every rule on the bundled sample trace") {
  test::TempDir tmp("sample-all");
  const std::string trace = test::source_dir() + "/traces/niah_stories260k.h5";
  const auto r = test::run_kvsim("replay " + trace + " --rules all --budgets 0.1,0.2 --out " + tmp.file("out"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::ifstream csv(tmp.file("out/metrics.csv"));
  REQUIRE(csv.good());
  std::stringstream ss;
  ss << csv.rdbuf();
  const std::string text = ss.str();
  // Every registered rule name and every expanded spec appears in the rule column.
  for (const auto& info : rule_catalogue()) {
    CAPTURE(info.name);
    // Specs with parameters contain commas and are quoted in the CSV.
    const bool found = text.find("\n" + info.name) != std::string::npos ||
                       text.find("\n\"" + info.name) != std::string::npos;
    CHECK(found);
  }
  for (const auto& rule : make_rules("all")) {
    CAPTURE(rule->spec());
    CHECK(text.find(rule->spec()) != std::string::npos);
  }
}
