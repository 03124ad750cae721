// CSV and JSON readers of the report: RFC 4180 quoting, error messages naming file/line/column.
#include <doctest/doctest.h>

#include <cmath>

#include "core/error.h"
#include "report/csv_reader.h"
#include "report/json_reader.h"

using namespace kvsim::report;

TEST_CASE("csv: quoted rule specs with commas, doubled quotes, CRLF and a missing final newline") {
  const auto t = CsvTable::parse(
      "rule,budget,pert_l1\r\n\"snapkv(window=32,kernel=7)\",0.1,1.5\r\n\"say \"\"hi\"\"\",512,nan\r\nx,\"a\nb\",-inf", "m.csv");
  REQUIRE(t.rows() == 3);
  CHECK(t.cell(0, 0) == "snapkv(window=32,kernel=7)");
  CHECK(t.cell(1, 0) == "say \"hi\"");
  CHECK(t.cell(2, 1) == "a\nb");
  CHECK(t.number(0, t.column("pert_l1")) == 1.5);
  CHECK(std::isnan(t.number(1, 2)));
  CHECK(t.number(2, 2) == -INFINITY);
  CHECK(t.integer(1, 1) == 512);
}

TEST_CASE("csv: errors name the file, the line and the column") {
  CHECK_THROWS_WITH_AS(CsvTable::parse("a,b\n1,2\n3\n", "m.csv"), "m.csv: line 3: 1 fields, the header has 2",
                       kvsim::Error);
  CHECK_THROWS_WITH_AS(CsvTable::parse("a,b\n\"1,2\n", "m.csv"), "m.csv: line 2: unterminated quoted field", kvsim::Error);
  const auto t = CsvTable::parse("a,b\n1,x\n", "m.csv");
  CHECK_THROWS_WITH_AS(t.column("pert_l1"), "m.csv: pert_l1: missing column", kvsim::Error);
  CHECK_THROWS_WITH_AS(t.number(0, 1), "m.csv: line 2, column b: 'x' is not a number", kvsim::Error);
  CHECK_THROWS_WITH_AS(t.integer(0, 1), "m.csv: line 2, column b: 'x' is not an integer", kvsim::Error);
  CHECK_THROWS_AS(CsvTable::read("/nonexistent/metrics.csv"), kvsim::Error);
}

TEST_CASE("json: nested objects, arrays, escapes, null as NaN, key order kept") {
  const auto v = JsonValue::parse(
      R"({"b": 1, "a": {"x": [1, 2.5e-3, -4], "s": "q\"\\\n\u00e9"}, "n": null, "t": true})", "s.json");
  REQUIRE(v.is_object());
  CHECK(v.members()[0].first == "b");
  CHECK(v.get_number("b", 0) == 1);
  const JsonValue* a = v.find("a");
  REQUIRE(a);
  CHECK(a->find("x")->items()[1].number() == 2.5e-3);
  CHECK(a->find("x")->items()[2].number() == -4);
  CHECK(a->find("s")->string() == "q\"\\\n\xc3\xa9");
  CHECK(std::isnan(v.find("n")->number()));
  CHECK(v.find("t")->boolean());
  CHECK(v.find("missing") == nullptr);
  CHECK(v.get_string("missing", "dflt") == "dflt");
}

TEST_CASE("json: malformed input is a one-line error with the line and column") {
  CHECK_THROWS_WITH_AS(JsonValue::parse("{\"a\": }", "s.json"),
                       "s.json: line 1, column 7: syntax error while parsing value - unexpected '}'; expected '[', '{', or a literal",
                       kvsim::Error);
  CHECK_THROWS_AS(JsonValue::parse("{\"a\": 1", "s.json"), kvsim::Error);
  CHECK_THROWS_AS(JsonValue::parse("[1, 2] x", "s.json"), kvsim::Error);
  CHECK_THROWS_AS(JsonValue::parse("\"abc", "s.json"), kvsim::Error);
}

TEST_CASE("json: nesting 100000 deep is a clean error, not a stack overflow") {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  CHECK_THROWS_WITH_AS(JsonValue::parse(deep, "deep.json"), "deep.json: JSON nested more than 200 levels deep",
                       kvsim::Error);
}
