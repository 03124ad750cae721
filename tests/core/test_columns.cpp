// Declared columns and their sinks: the CSV text, the columnar table and the checks that a row
// written against its declaration cannot drift from it.
#include <doctest/doctest.h>

#include <cmath>
#include <sstream>

#include "core/columns.h"
#include "core/error.h"

using namespace kvsim;

namespace {
const TableSchema kSchema{"t.csv", "a test table",
                          {{"name", ColumnType::text, "", "a label"},
                           {"n", ColumnType::integer, "", "a count"},
                           {"x", ColumnType::real, "s", "a value"}}};
}

TEST_CASE("columns: CSV sink writes the declared header, quoted text and round-trip doubles") {
  std::ostringstream out;
  CsvRowSink csv(out, kSchema);
  csv.text("a,b");
  csv.integer(-3);
  csv.real(0.1);
  csv.end_row();
  csv.text("c");
  csv.integer(7);
  csv.real(std::nan(""));
  csv.end_row();
  CHECK(out.str() == "name,n,x\n\"a,b\",-3,0.1\nc,7,nan\n");
  csv.text("short");
  CHECK_THROWS_AS(csv.end_row(), std::logic_error);  // a row with fewer cells than declared
}

TEST_CASE("columns: columnar sink keeps the declared types; tee writes both") {
  ColumnTable t(kSchema);
  ColumnTableSink mem(t);
  std::ostringstream out;
  CsvRowSink csv(out, kSchema, false, "pre,");
  TeeRowSink both(csv, mem);
  both.text("a");
  both.integer(1);
  both.real(2.5);
  both.end_row();
  CHECK(t.rows == 1);
  CHECK(std::get<std::vector<std::string>>(t.columns[0]) == std::vector<std::string>{"a"});
  CHECK(std::get<std::vector<std::int64_t>>(t.columns[1]) == std::vector<std::int64_t>{1});
  CHECK(std::get<std::vector<double>>(t.columns[2]) == std::vector<double>{2.5});
  CHECK(out.str() == "pre,a,1,2.5\n");
  ColumnTableSink wrong(t);
  CHECK_THROWS_AS(wrong.real(1.0), std::logic_error);  // a number where text is declared
}

TEST_CASE("columns: index by name, markdown table") {
  CHECK(kSchema.index("x") == 2);
  CHECK_THROWS_AS(kSchema.index("y"), Error);
  CHECK(kSchema.header() == "name,n,x");
  CHECK(markdown_table(kSchema) ==
        "| column | type | unit | meaning |\n| --- | --- | --- | --- |\n| `name` | str |  | a label |\n"
        "| `n` | int64 |  | a count |\n| `x` | float64 | s | a value |\n");
}
