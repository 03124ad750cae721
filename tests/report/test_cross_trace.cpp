// The sweep's cross-trace summary groups traces by model (never averaging output scales of
// different models), reports the scale-free rel_pert_l1, and puts budgets on their typed axis.
#include <doctest/doctest.h>

#include <filesystem>

#include "core/json.h"
#include "core/table_io.h"
#include "report/sweep_outputs.h"
#include "testutil/testutil.h"

using namespace kvsim;

TEST_CASE("cross-trace stats: one group per model, rel_pert_l1, budgets as typed") {
  const std::string a = test::source_dir() + "/traces/niah_stories260k.h5";
  const std::string b = test::source_dir() + "/traces/longbench_stories260k.h5";
  if (!std::filesystem::exists(a) || !std::filesystem::exists(b)) return;
  test::TempDir tmp("cross-trace");
  const auto r = test::run_kvsim("sweep --traces " + a + "," + b + " --rules 'snapkv;streaming' --budgets 0.1,cr=0.8" +
                                 " --out " + tmp.file("s") + " --nu-cache " + test::test_nu_cache_dir());
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  // The second trace stands for another model (another name in its summary).
  const std::string summary = tmp.file("s/longbench_stories260k/summary.json");
  Json j = read_json_file(summary);
  j["trace"]["model"] = "other/model.bin";
  write_file_atomic(summary, json_text(j));

  const auto stats = report::cross_trace_stats(report::load_sweep_output(tmp.file("s")));
  REQUIRE(stats.size() == 2 * 2 * 2);  // models x rules x budgets
  for (const auto& c : stats) {
    CHECK(c.traces == 1);
    CHECK(c.rel_pert_l1_mean > 0);
    CHECK(c.rel_pert_l1_min <= c.rel_pert_l1_mean);
    CHECK(c.budget_x == doctest::Approx(c.budget == "0.1" ? 0.1 : 0.2));  // cr=0.8 keeps 0.2
    CHECK((c.model.rfind("stories260K.bin (5 layers, 8/4 heads, d 8)", 0) == 0 ||
           c.model.rfind("model.bin (5 layers", 0) == 0));
  }
  CHECK(report::budget_axis(stats).find("kept fraction (as typed") != std::string::npos);
}
