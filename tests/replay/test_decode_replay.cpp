// The decode protocol through the replay (rules doc 1.9) on the stories260K sample trace:
// `full` measures exactly zero; --every past the generation with a compressed start gives the
// one-shot protocol's rows; a budget above every length gives full's rows; summary.json says
// which protocol ran. (Per-query cache contents are checked against float64 re-enactments in
// tests/rules/test_decode_protocol.cpp.)
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <variant>

#include "core/error.h"
#include "replay/replay.h"
#include "testutil/testutil.h"

using namespace kvsim;

namespace {

const std::string kTrace = test::source_dir() + "/traces/niah_stories260k.h5";

ReplayResult run(const std::string& rules, const std::string& budgets, i64 every, bool compressed) {
  ReplayOptions o;
  o.trace_path = kTrace;
  o.rules = rules;
  o.budgets = budgets;
  o.collect = true;
  o.per_query = true;
  o.threads = 2;
  if (every > 0) set_decode_protocol(o.protocol, "decode", every, compressed ? "compressed" : "full");
  return replay(o);
}

const std::vector<double>& reals(const ColumnTable& t, const std::string& name) {
  for (std::size_t c = 0; c < t.schema->columns.size(); ++c)
    if (t.schema->columns[c].name == name) return std::get<std::vector<double>>(t.columns[c]);
  throw Error("no column " + name);
}

// Every cell equal (NaN equal to NaN).
bool same_rows(const ColumnTable& a, const ColumnTable& b) {
  if (a.rows != b.rows || a.columns.size() != b.columns.size()) return false;
  for (std::size_t c = 0; c < a.columns.size(); ++c) {
    if (const auto* x = std::get_if<std::vector<double>>(&a.columns[c])) {
      const auto& y = std::get<std::vector<double>>(b.columns[c]);
      for (std::size_t r = 0; r < a.rows; ++r)
        if (!((*x)[r] == y[r] || (std::isnan((*x)[r]) && std::isnan(y[r])))) return false;
    } else if (a.columns[c] != b.columns[c]) {
      return false;
    }
  }
  return true;
}

}  // namespace

TEST_CASE("decode replay: full is exactly zero, both starts") {
  if (!std::filesystem::exists(kTrace)) return;
  for (bool compressed : {false, true}) {
    const auto r = run("full", "0.1", 8, compressed);
    REQUIRE(r.metrics.rows > 0);
    for (double x : reals(r.metrics, "pert_l1")) CHECK(x == 0.0);
    for (double x : reals(r.per_query, "pert_l1")) CHECK(x == 0.0);
    CHECK(r.summary.json["protocol"]["name"] == "decode");
    CHECK(r.summary.json["protocol"]["every"] == 8);
    CHECK(r.summary.json["protocol"]["admission"] == "evict");
  }
}

TEST_CASE("decode replay: every past the generation, compressed start = the one-shot protocol's rows") {
  if (!std::filesystem::exists(kTrace)) return;
  const std::string rules = "snapkv;ada(snapkv);critical(ada(snapkv));tova(variant=stepwise);keydiff;expected";
  const auto one = run(rules, "0.1,256", 0, false);
  const auto dec = run(rules, "0.1,256", 100000, true);
  CHECK(same_rows(one.metrics, dec.metrics));
  CHECK(same_rows(one.per_query, dec.per_query));
  // and a real decode run differs from it
  const auto every8 = run(rules, "0.1,256", 8, true);
  CHECK_FALSE(same_rows(one.metrics, every8.metrics));
  const auto& budgets = every8.summary.json["rules"][0]["budgets"];
  CHECK(budgets[0]["decode_compressions"].get<i64>() > 0);
  CHECK(budgets[0]["decode_cache_tokens_mean"].get<double>() > 0);
}

TEST_CASE("decode replay: a budget above every length keeps everything (full's rows)") {
  if (!std::filesystem::exists(kTrace)) return;
  const auto all = run("snapkv;knorm;ada(snapkv)", "100000", 8, false);
  for (double x : reals(all.metrics, "pert_l1")) CHECK(x == 0.0);
  for (double x : reals(all.metrics, "retained_mass")) CHECK(x == 1.0);
}

TEST_CASE("decode replay: option errors name the option") {
  ProtocolOptions p;
  CHECK_THROWS_WITH_AS(set_decode_protocol(p, "decoding", 8, "full"), doctest::Contains("--protocol"), Error);
  CHECK_THROWS_WITH_AS(set_decode_protocol(p, "decode", 0, "full"), doctest::Contains("--every"), Error);
  CHECK_THROWS_WITH_AS(set_decode_protocol(p, "decode", 8, "empty"), doctest::Contains("--decode-start"), Error);
  CHECK_THROWS_WITH_AS(set_decode_protocol(p, "oneshot", 8, "full"), doctest::Contains("--every"), Error);
  CHECK_THROWS_WITH_AS(set_decode_protocol(p, "decode", 8, "full", "keep"), doctest::Contains("--admission"), Error);
  CHECK_THROWS_WITH_AS(set_decode_protocol(p, "oneshot", 0, "full", "append-only"), doctest::Contains("--admission"),
                       Error);
  p.eval = EvalMode::both;
  CHECK_THROWS_WITH_AS(set_decode_protocol(p, "decode", 8, "full"), doctest::Contains("--eval"), Error);
}
