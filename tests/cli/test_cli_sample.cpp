// The README's main job in miniature: every rule of 'all' replays the bundled sample trace.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
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
  REQUIRE(std::filesystem::exists(tmp.file("out/metrics.csv")));
  const std::string text = test::slurp(tmp.file("out/metrics.csv"));
  // Every registered rule name (that builds without parameters) and every expanded spec appears
  // in the rule column.
  for (const auto& info : rule_catalogue()) {
    if (!info.example.empty()) continue;  // needs parameters (external): not part of "all"
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

TEST_CASE("cli: metrics.csv budget_tokens follows pyramid's per-layer schedule") {
  test::TempDir tmp("sample-pyramid");
  const std::string trace = test::source_dir() + "/traces/niah_stories260k.h5";
  const auto r = test::run_kvsim("replay " + trace + " --rules 'snapkv;pyramid(snapkv,variant=int)' --budgets 0.2 --out " +
                                 tmp.file("out"));
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  std::ifstream csv(tmp.file("out/metrics.csv"));
  std::string line;
  std::getline(csv, line);  // header
  std::map<std::string, std::map<int, long>> budget_of;  // rule name -> layer -> budget_tokens (layer rows)
  while (std::getline(csv, line)) {
    // rule is quoted (its spec has commas): "spec",label,budget,budget_tokens,kept_tokens,cache_bytes,
    // cache_ratio,layer,head,...
    // and so is a label with a comma (pyramid(snapkv,variant=int)).
    auto close = line.find("\",");
    REQUIRE(close != std::string::npos);
    const std::string name = line.substr(1, line.find('(') - 1);
    if (line[close + 2] == '"') close = line.find("\",", close + 3);  // skip the quoted label
    else close = line.find(',', close + 2) - 1;
    std::stringstream rest(line.substr(close + 2));
    std::string budget, budget_tokens, kept, bytes, ratio, layer, head;
    std::getline(rest, budget, ',');
    std::getline(rest, budget_tokens, ',');
    std::getline(rest, kept, ',');
    std::getline(rest, bytes, ',');
    std::getline(rest, ratio, ',');
    std::getline(rest, layer, ',');
    std::getline(rest, head, ',');
    if (head == "-1") budget_of[name][std::stoi(layer)] = std::stol(budget_tokens);
  }
  REQUIRE(budget_of["snapkv"].size() == 5);
  REQUIRE(budget_of["pyramid"].size() == 5);
  for (int l = 0; l < 5; ++l) CHECK(budget_of["snapkv"][l] == 401);  // floor(0.2 * 2007)
  // Pyramid's budget decreases with depth around the nominal one.
  for (int l = 1; l < 5; ++l) CHECK(budget_of["pyramid"][l] < budget_of["pyramid"][l - 1]);
  CHECK(budget_of["pyramid"][0] > 401);
  CHECK(budget_of["pyramid"][4] < 401);
}
