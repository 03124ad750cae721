// core/json.h: what kvsim's JSON files look like on disk.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "core/json.h"

using namespace kvsim;

TEST_CASE("json_text: compact, keys in written order, non-finite as null, exact doubles") {
  Json j = {{"z", 1}, {"a", 0.1}, {"nan", std::nan("")}, {"inf", std::numeric_limits<double>::infinity()},
            {"big", std::int64_t{1} << 53}, {"list", {1, 2}}};
  CHECK(json_text(j) == "{\"z\":1,\"a\":0.1,\"nan\":null,\"inf\":null,\"big\":9007199254740992,\"list\":[1,2]}\n");
  const double third = 1.0 / 3.0;
  CHECK(parse_json(json_text(Json{{"x", third}}), "t")["x"].get<double>() == third);  // round trip
}

TEST_CASE("json_text: invalid UTF-8 (a corrupt trace's model name) is replaced, never thrown on") {
  const Json j = {{"model", std::string("ok\xff\xfe")}};
  CHECK(json_text(j) == "{\"model\":\"ok\xef\xbf\xbd\xef\xbf\xbd\"}\n");
}

TEST_CASE("parse_json: one-line error naming the source, line and column") {
  CHECK_THROWS_WITH_AS(parse_json("{\n\"a\": }", "s.json"),
                       "s.json: line 2, column 6: syntax error while parsing value - unexpected '}'; expected '[', '{', or a literal",
                       Error);
  CHECK_THROWS_AS(read_json_file("/nonexistent/summary.json"), Error);
}
