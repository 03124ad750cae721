// The typed replay: the columns it returns in memory are the files it writes, cell for cell, and
// it writes nothing without an output folder. The tables follow the declared schema.
#include <doctest/doctest.h>

#include <filesystem>
#include <sstream>

#include "replay/metric_columns.h"
#include "replay/replay.h"
#include "testutil/testutil.h"

using namespace kvsim;

namespace {

// The table as the CSV writer would print it.
std::string as_csv(const ColumnTable& t) {
  std::ostringstream out;
  CsvRowSink csv(out, *t.schema);
  for (std::size_t r = 0; r < t.rows; ++r) {
    for (const auto& col : t.columns)
      std::visit(
          [&](const auto& v) {
            using T = typename std::decay_t<decltype(v)>::value_type;
            if constexpr (std::is_same_v<T, std::string>) csv.text(v[r]);
            else if constexpr (std::is_same_v<T, std::int64_t>) csv.integer(v[r]);
            else csv.real(v[r]);
          },
          col);
    csv.end_row();
  }
  return out.str();
}

}  // namespace

TEST_CASE("replay: in-memory columns equal the written files; no files without --out") {
  const std::string trace = test::source_dir() + "/traces/niah_stories260k.h5";
  if (!std::filesystem::exists(trace)) return;
  test::TempDir tmp("replay_columns");
  ReplayOptions o;
  o.trace_path = trace;
  o.rules = "snapkv;ada(pyramid(snapkv));think(snapkv);h2o(variant=stepwise)";
  o.budgets = "0.1,64";
  o.per_query = o.save_selection = true;
  o.protocol.eval = EvalMode::both;
  o.nu_cache_dir = test::test_nu_cache_dir();
  o.collect = true;
  const ReplayResult mem = replay(o);
  CHECK(std::filesystem::is_empty(tmp.path));
  o.out_dir = tmp.file("out");
  const ReplayResult both = replay(o);
  CHECK(as_csv(mem.metrics) == test::slurp(tmp.file("out/metrics.csv")));
  CHECK(as_csv(mem.per_query) == test::slurp(tmp.file("out/metrics_per_query.csv")));
  CHECK(as_csv(both.metrics) == as_csv(mem.metrics));
  CHECK(mem.metrics.schema == &metrics_schema());
  CHECK(mem.metrics.columns.size() == metrics_schema().columns.size());
  CHECK(mem.selection.size() == 4 * 2 * 5);  // rules x budgets x layers
  CHECK(mem.summary.json["rules"].size() == 4);
  CHECK(mem.summary.table == both.summary.table);
}
