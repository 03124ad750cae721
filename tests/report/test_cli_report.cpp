// kvsim analyze and kvsim report through the CLI: outputs, one-line errors, no partial files.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "report/analysis_files.h"
#include "testutil/testutil.h"

using namespace kvsim;
namespace fs = std::filesystem;

namespace {

std::string sample_trace() { return test::source_dir() + "/traces/niah_stories260k.h5"; }

int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace

TEST_CASE("kvsim analyze on the sample trace writes key_stats.csv, key_recall.csv and summary.json") {
  if (!fs::exists(sample_trace())) {
    MESSAGE("skipped: sample trace missing");
    return;
  }
  test::TempDir dir("analyze");
  const auto r = test::run_kvsim("analyze " + sample_trace() + " --out " + dir.file("out") + " --layers 1,3 --top 0.1,16");
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out.find("spearman") != std::string::npos);
  const auto a = report::load_analyze_output(dir.file("out"));
  CHECK(a.layers == std::vector<int>{1, 3});
  CHECK(a.stats.size() == 2u * 8 * 2);  // layers x heads x {queries, window}
  CHECK(a.recall.size() == a.stats.size() * 2);
  for (const auto& s : a.stats) {
    CHECK(s.spearman >= -1.0);
    CHECK(s.spearman <= 1.0);
    CHECK(s.mass_frac_90 > 0.0);
    CHECK(s.mass_frac_90 <= 1.0);
    CHECK(s.n_keys == 2007);  // question-agnostic n_c = end of the context
    CHECK(s.n_queries == (s.eval == "queries" ? 57 : 32));
  }
  CHECK(a.summary.find("protocol")->get_number("n_c", 0) == 2007);

  // The aware compression point moves n_c to prefill_len.
  const auto aware = test::run_kvsim("analyze " + sample_trace() + " --out " + dir.file("aware") +
                                     " --layers 0 --compression-point aware");
  REQUIRE_MESSAGE(aware.exit_code == 0, aware.err);
  CHECK(report::load_analyze_output(dir.file("aware")).stats.front().n_keys == 2048);
}

TEST_CASE("kvsim analyze: bad input is a one-line error and leaves no output") {
  test::TempDir dir("analyze-err");
  auto r = test::run_kvsim("analyze " + dir.file("missing.h5") + " --out " + dir.file("out"));
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("missing.h5") != std::string::npos);
  CHECK(lines(r.err) == 1);
  CHECK(!fs::exists(dir.file("out/summary.json")));
  r = test::run_kvsim("analyze " + sample_trace() + " --out " + dir.file("out") + " --compression-point middle");
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("--compression-point: middle") != std::string::npos);
  r = test::run_kvsim("analyze " + sample_trace() + " --out " + dir.file("out") + " --top 0.1,abc");
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("--top: abc") != std::string::npos);
  r = test::run_kvsim("analyze " + sample_trace());
  CHECK(r.exit_code == 2);
}

TEST_CASE("kvsim report: errors name the file, and no report file is left behind") {
  test::TempDir dir("report-err");
  auto r = test::run_kvsim("report " + dir.file("nope") + " --out " + dir.file("r.html"));
  CHECK(r.exit_code == 1);
  CHECK(r.err.find(dir.file("nope")) != std::string::npos);
  CHECK(lines(r.err) == 1);
  CHECK(!fs::exists(dir.file("r.html")));

  fs::create_directories(dir.file("bad"));
  std::ofstream(dir.file("bad/summary.json")) << "{}";
  std::ofstream(dir.file("bad/metrics.csv"))
      << "rule,budget,budget_tokens,kept_tokens,cache_bytes,cache_ratio,layer,head,eval,n_queries,retained_mass,"
         "retained_mass_min,pert_l1,pert_l1_max,pert_l2,pert_l2_max,rel_pert_l1,rel_pert_l2,bound_ada,bound_critical\n"
         "snapkv,0.1,5,5,160,0.1,0,-1,queries,3,0.9,0.8,oops,1,1,1,1,1,1,1\n";
  r = test::run_kvsim("report " + dir.file("bad") + " --out " + dir.file("r.html"));
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("metrics.csv: line 2, column pert_l1: 'oops' is not a number") != std::string::npos);
  CHECK(!fs::exists(dir.file("r.html")));
  CHECK(test::partial_files(dir.file("r.html")).empty());

  CHECK(test::run_kvsim("report --out " + dir.file("r.html")).exit_code == 2);
  CHECK(test::run_kvsim("report " + dir.file("bad")).exit_code == 2);  // --out missing
}
