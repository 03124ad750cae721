// Spec parsing, the registry and budgets.
#include <doctest/doctest.h>

#include <algorithm>

#include "core/error.h"
#include "rules/budget.h"
#include "rules/factory.h"
#include "rules/registry.h"
#include "rules/spec.h"
#include "testutil/testutil.h"

using namespace kvsim;

namespace {
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("parse_spec: nesting, parameters, spaces") {
  Spec s = parse_spec(" critical( ada(snapkv(window=32,kernel=7,pool=max)), alpha=0.5 ,eps=1e-4)");
  CHECK(s.name == "critical");
  REQUIRE(s.args.size() == 1);
  CHECK(s.args[0].name == "ada");
  CHECK(s.args[0].args[0].name == "snapkv");
  CHECK(s.args[0].args[0].params[2] == std::pair<std::string, std::string>("pool", "max"));
  CHECK(s.params.size() == 2);
  CHECK(s.params[1].second == "1e-4");
  CHECK(print_spec(s) == "critical(ada(snapkv(window=32,kernel=7,pool=max)),alpha=0.5,eps=1e-4)");
  CHECK(parse_spec(print_spec(s)) == s);
  CHECK(print_spec(parse_spec("tova")) == "tova");
  CHECK(print_spec(parse_spec("tova()")) == "tova");
}

TEST_CASE("parse_spec: errors name the spec and the column") {
  CHECK(error_of([] { parse_spec("snapkv(window=32"); }) == "rule spec 'snapkv(window=32': missing ')' at column 17");
  CHECK(error_of([] { parse_spec("snapkv(window=)"); }) ==
        "rule spec 'snapkv(window=)': missing value for parameter 'window' at column 15");
  CHECK(error_of([] { parse_spec("snapkv(1)"); }) ==
        "rule spec 'snapkv(1)': expected a rule or a key=value parameter, found '1' at column 8");
  CHECK(error_of([] { parse_spec(""); }) == "rule spec '': empty spec at column 1");
  CHECK(error_of([] { parse_spec("a(x=1,x=2)"); }) == "rule spec 'a(x=1,x=2)': parameter 'x' given twice at column 7");
  CHECK(error_of([] { parse_spec("a(x=1,b)"); }) ==
        "rule spec 'a(x=1,b)': nested rule 'b' after key=value parameters at column 7");
  CHECK(error_of([] { parse_spec("a)"); }) == "rule spec 'a)': unexpected ')' at column 2");
}

TEST_CASE("registry: the core rules register themselves") {
  const auto names = registered_rule_names();
  for (const char* n : {"full", "random", "streaming", "oracle", "knorm"})
    CHECK_MESSAGE(std::find(names.begin(), names.end(), n) != names.end(), n);
  CHECK(make_rule("streaming")->spec() == "streaming(sink=4)");
  CHECK(make_rule("random(seed=7)")->spec() == "random(seed=7)");
  CHECK(make_rule("full")->spec() == "full");
}

TEST_CASE("registry: every catalogue entry round-trips and documents its defaults") {
  for (const auto& info : rule_catalogue()) {
    CAPTURE(info.name);
    auto r = make_rule(info.example.empty() ? info.name : info.example);
    const std::string canon = r->spec();
    CHECK(make_rule(canon)->spec() == canon);
    CHECK(parse_spec(print_spec(parse_spec(canon))) == parse_spec(canon));
    // The catalogue lists exactly the parameters the builder reads, with the same defaults
    // (base rules are listed with type "rule"; a default may carry a note after its value).
    const Spec s = parse_spec(canon);
    std::vector<RuleParam> listed, bases;
    for (const auto& p : info.params) (p.type == "rule" ? bases : listed).push_back(p);
    // A base listed without a default is optional and absent from the canonical spec when not
    // given (defensive); one with a default is always there.
    const auto optional = std::count_if(bases.begin(), bases.end(), [](const RuleParam& p) { return p.default_value.empty(); });
    CHECK(s.args.size() <= bases.size());
    CHECK(s.args.size() + optional >= bases.size());
    REQUIRE(s.params.size() == listed.size());
    const Spec given = parse_spec(info.example.empty() ? info.name : info.example);
    for (std::size_t i = 0; i < s.params.size(); ++i) {
      CHECK(s.params[i].first == listed[i].name);
      const bool in_example = std::any_of(given.params.begin(), given.params.end(),
                                          [&](const auto& p) { return p.first == listed[i].name; });
      if (!in_example) CHECK(listed[i].default_value.rfind(s.params[i].second, 0) == 0);
    }
    CHECK(!info.summary.empty());
  }
}

TEST_CASE("registry: clear errors") {
  CHECK(contains(error_of([] { make_rule("nosuchrule"); }), "rule spec 'nosuchrule': unknown rule 'nosuchrule' (known: "));
  CHECK(error_of([] { make_rule("streaming(sinks=3)"); }) ==
        "rule spec 'streaming(sinks=3)': streaming: unknown parameter 'sinks' (known: sink)");
  CHECK(error_of([] { make_rule("streaming(sink=x)"); }) ==
        "rule spec 'streaming(sink=x)': streaming: parameter 'sink': expected an integer, got 'x'");
  CHECK(error_of([] { make_rule("streaming(sink=-1)"); }) ==
        "rule spec 'streaming(sink=-1)': streaming: parameter 'sink': -1 is out of range [0, 1073741824]");
  CHECK(error_of([] { make_rule("streaming(knorm)"); }) ==
        "rule spec 'streaming(knorm)': streaming: takes no base rule, but got 'knorm'");
  CHECK(error_of([] { make_rule("oracle(gqa=avg)"); }) ==
        "rule spec 'oracle(gqa=avg)': oracle: parameter 'gqa': 'avg' is not one of mean, max, sum, query");
  CHECK(error_of([] { make_rule("full(x=1)"); }) ==
        "rule spec 'full(x=1)': full: unknown parameter 'x' (it takes no parameters)");
}

TEST_CASE("make_rules: lists and all") {
  auto rs = make_rules("full; streaming(sink=2) ;knorm");
  REQUIRE(rs.size() == 3);
  CHECK(rs[1]->spec() == "streaming(sink=2)");
  std::size_t n_all = 0;
  for (const auto& info : rule_catalogue()) n_all += info.in_all;
  // "default": the in_all rules plus critical(ada(snapkv)); "all": every registered rule plus
  // four composites/step-wise variants.
  CHECK(make_rules("default").size() == n_all + 1);
  std::size_t standalone = 0;
  for (const auto& info : rule_catalogue()) standalone += info.example.empty();
  CHECK(make_rules("all").size() == standalone + 4);
  CHECK(n_all >= 10);
  CHECK(contains(error_of([] { make_rules("full;;knorm"); }), "empty rule spec"));
}

TEST_CASE("budgets") {
  Budget f = Budget::parse("0.2");
  CHECK(f.kind == Budget::Kind::fraction);
  CHECK(f.tokens_for(1000) == 200);
  CHECK(Budget::parse("20%").tokens_for(1000) == 200);
  CHECK(Budget::parse("0.29").tokens_for(100) == 29);  // not 28 from 28.999999999999996
  CHECK(Budget::parse("0.001").tokens_for(10) == 1);   // at least one token
  CHECK(Budget::parse("1.0").tokens_for(37) == 37);
  Budget t = Budget::parse("512");
  CHECK(t.kind == Budget::Kind::tokens);
  CHECK(t.tokens_for(4096) == 512);
  CHECK(error_of([&] { t.tokens_for(100); }) ==
        "budget '512': 512 tokens exceed the 100 compressible tokens before the compression point");
  CHECK(contains(error_of([] { Budget::parse("1.5"); }), "budget '1.5': a kept fraction must be in (0, 1]"));
  CHECK(contains(error_of([] { Budget::parse("0"); }), "budget '0': a token count must be at least 1"));
  CHECK(contains(error_of([] { Budget::parse("abc"); }), "budget 'abc': expected a fraction"));
  // kvpress compression ratios: max(1, int(n (1 - cr))) with kvpress's float arithmetic.
  Budget c = Budget::parse("cr=0.8");
  CHECK(c.kind == Budget::Kind::compression_ratio);
  CHECK(c.tokens_for(10) == 1);  // int(10 * (1 - 0.8)) = int(1.9999999999999996) = 1, as kvpress
  CHECK(Budget::parse("0.2").tokens_for(10) == 2);  // a kept fraction rounds 2.0000000000000004 down to 2
  CHECK(c.exact_tokens(2007) == 2007 * (1 - 0.8));
  CHECK(Budget::parse("cr=0.5").exact_tokens(2007) == 1003.5);
  CHECK(Budget::parse("cr=0.5").tokens_for(2007) == 1003);
  CHECK(Budget::parse("cr=0.9999").tokens_for(100) == 1);
  CHECK(Budget::parse("cr=0").tokens_for(100) == 100);
  CHECK(Budget::parse("cr=0.75").share_of(21, 2007) == 5);  // ChunkKV: int(21 * 0.25)
  CHECK(contains(error_of([] { Budget::parse("cr=1"); }), "budget 'cr=1': a compression ratio must be in [0, 1)"));
  CHECK(contains(error_of([] { Budget::parse("cr=abc"); }), "budget 'cr=abc': expected a fraction"));
  // Overflowing token counts are refused with the count as written, not a wrapped integer.
  CHECK(error_of([] { Budget::parse("99999999999999999999"); }) ==
        "budget '99999999999999999999': a token count must be at most 2^53");
  CHECK(error_of([] { Budget::parse("9007199254740992").tokens_for(10); }).find("9007199254740992 tokens exceed") !=
        std::string::npos);
  auto bs = parse_budgets("0.1, 20%,512");
  REQUIRE(bs.size() == 3);
  CHECK(bs[1].text == "20%");
  CHECK(contains(error_of([] { parse_budgets("0.1,,2"); }), "empty budget"));
  // A repeated budget (same kind and value, however written) is replayed once, with a note.
  std::vector<std::string> merged;
  bs = parse_budgets("0.2,20%,cr=0.8,512,0.2,cr=0.80,512", &merged);
  REQUIRE(bs.size() == 3);
  CHECK(bs[0].text == "0.2");
  CHECK(bs[1].text == "cr=0.8");  // a compression ratio of 0.8 is not a fraction 0.2: kept apart
  CHECK(merged == std::vector<std::string>{"20%", "0.2", "cr=0.80", "512"});
  CHECK(repeated_budgets_note("0.1,0.2") == "");
  CHECK(repeated_budgets_note("0.2,0.2") == "--budgets: 0.2 repeats an earlier budget; each budget is replayed once");
}

TEST_CASE("kvsim rules lists every rule with its parameters and the budget convention") {
  const auto r = kvsim::test::run_kvsim("rules");
  REQUIRE(r.exit_code == 0);
  CHECK(contains(r.out, "INCLUDES protected tokens"));
  for (const auto& info : rule_catalogue()) {
    CHECK_MESSAGE(contains(r.out, "\n" + info.name + "  -  " + info.summary + "\n"), info.name);
    for (const auto& p : info.params) CHECK(contains(r.out, "    " + p.name + " (" + p.type + ", default "));
  }
  CHECK(kvsim::test::run_kvsim("rules --help").exit_code == 0);
  CHECK(kvsim::test::run_kvsim("rules --bogus").exit_code == 2);
}
