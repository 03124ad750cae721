// kvsim replay end to end on a small synthetic trace: output files and columns, invariants in
// the rows, determinism across thread counts, and failed runs leaving no metrics.csv.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "testutil/testutil.h"
#include "trace/synthetic.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

std::vector<std::string> split_csv_line(const std::string& line) {  // RFC 4180 subset
  std::vector<std::string> out(1);
  bool q = false;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (q) {
      if (c == '"' && i + 1 < line.size() && line[i + 1] == '"') out.back() += '"', ++i;
      else if (c == '"') q = false;
      else out.back() += c;
    } else if (c == '"') {
      q = true;
    } else if (c == ',') {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

std::string small_trace(const TempDir& dir, bool all_queries = true) {
  SynthOptions o = small_shape(2, 320);
  o.all_queries = all_queries;
  const std::string path = dir.file(all_queries ? "t.h5" : "tw.h5");
  write_synthetic_trace(path, o, WriteOptions{});
  return path;
}

}  // namespace

TEST_CASE("replay writes metrics.csv, metrics_per_query.csv, summary.json, selection.h5") {
  TempDir dir("cli-replay");
  const auto trace = small_trace(dir);
  const std::string out = dir.file("out");
  const auto r = run_kvsim("replay " + trace + " --rules 'full;random;streaming' --budgets 0.2,16 --out " + out +
                           " --per-query --save-selection --eval both --threads 2");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("bound_critical") != std::string::npos);
  for (const char* f : {"metrics.csv", "metrics_per_query.csv", "summary.json", "selection.h5"})
    CHECK(std::filesystem::exists(out + "/" + f));
  for (const auto& e : std::filesystem::directory_iterator(out))
    CHECK(e.path().extension() != ".partial");

  std::istringstream csv(slurp(out + "/metrics.csv"));
  std::string line;
  std::getline(csv, line);
  CHECK(line ==
        "rule,label,budget,budget_tokens,kept_tokens,cache_bytes,cache_ratio,layer,head,eval,n_queries,retained_mass,"
        "retained_mass_min,pert_l1,pert_l1_max,pert_l2,pert_l2_max,rel_pert_l1,rel_pert_l2,bound_ada,bound_critical");
  int rows = 0;
  while (std::getline(csv, line)) {
    const auto c = split_csv_line(line);
    REQUIRE(c.size() == 21);
    ++rows;
    const double F = std::stod(c[11]), l1 = std::stod(c[13]), ada = std::stod(c[19]), crit = std::stod(c[20]);
    // float16 keys and values of the kept tokens: 4 head_dim bytes each (small_shape: head_dim 16),
    // over the float16 span of n_c = 304 tokens
    CHECK(std::stod(c[5]) == doctest::Approx(std::stod(c[4]) * 4 * 16));
    CHECK(std::stod(c[6]) == doctest::Approx(std::stod(c[4]) / 304));
    CHECK(c[1] == c[0].substr(0, c[0].find('(')));  // every parameter at its default: the bare name
    if (c[0] == "full") {
      CHECK(F == 1.0);
      CHECK(l1 == 0.0);
    }
    CHECK(l1 <= crit * (1 + 1e-5) + 1e-9);
    CHECK(crit <= ada * (1 + 1e-5) + 1e-9);
    CHECK((c[9] == "queries" || c[9] == "window"));
    CHECK(std::stoi(c[10]) == (c[9] == "queries" ? 16 : 32));
  }
  CHECK(rows == 3 * 2 * 2 * (4 + 1) * 2);  // rules x budgets x layers x (heads + layer) x eval sets

  std::istringstream pq(slurp(out + "/metrics_per_query.csv"));
  std::getline(pq, line);
  CHECK(line ==
        "rule,label,budget,budget_tokens,kept_tokens,cache_bytes,cache_ratio,layer,head,eval,query_pos,retained_mass,"
        "pert_l1,pert_l2,rel_pert_l1,rel_pert_l2,bound_ada,bound_critical");
  const std::string summary = slurp(out + "/summary.json");
  for (const char* key : {"\"protocol\"", "\"n_c\":304", "\"projected\":true", "\"timings\"", "\"peak_rss_bytes\"",
                          "\"select_seconds\"", "\"spec\":\"streaming("})
    CHECK(summary.find(key) != std::string::npos);

  // selection.h5 layout, read back with h5py: /<rule>/<budget>/layers/<l>/kept [units, n_c].
  const auto py = run_command(
      KVSIM_PYTHON " -c \"import h5py,sys; d=h5py.File(sys.argv[1])['2/1/layers/1/kept']; "
      "print(d.shape, d.dtype, d.attrs['mode'], d.attrs['budget'], d.attrs['rule'][:10], "
      "sorted(set(d[()].sum(axis=1).tolist())))\" " + out + "/selection.h5");
  INFO(py.err);
  CHECK(py.out == "(2, 304) uint8 kv 16 streaming( [16]\n");

  const std::string out1 = dir.file("out1"), out2 = dir.file("out2");
  const std::string common = "replay " + trace + " --rules 'random;streaming' --budgets 0.3 --layers 1 --out ";
  REQUIRE(run_kvsim(common + out1 + " --threads 1").exit_code == 0);
  REQUIRE(run_kvsim(common + out2 + " --threads 2").exit_code == 0);
  CHECK(slurp(out1 + "/metrics.csv") == slurp(out2 + "/metrics.csv"));
}

TEST_CASE("failed replays print one clear line and leave no metrics.csv") {
  TempDir dir("cli-replay-fail");
  const auto trace = small_trace(dir);
  const auto window_only = small_trace(dir, false);
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {trace + " --rules random --budgets 5000", "--budgets"},
      {trace + " --rules random --budgets 0.2 --layers 7", "--layers"},
      {trace + " --rules 'nosuchrule' --budgets 0.2", "nosuchrule"},
      {trace + " --rules random --budgets 0.2 --eval window --window 400", "--window"},
      {window_only + " --rules random --budgets 0.2 --eval window --window 64", "q_pos"},
      {trace + " --rules random --budgets 0.2 --compression-point aware --eval queries", ""},
  };
  int i = 0;
  for (const auto& c : cases) {
    const std::string out = dir.file("o" + std::to_string(i++));
    const auto r = run_kvsim("replay " + c.args + " --out " + out);
    INFO(c.args << " -> " << r.err);
    if (c.expect.empty()) {  // aware with generated tokens present: valid
      CHECK(r.exit_code == 0);
      continue;
    }
    CHECK(r.exit_code != 0);
    CHECK(r.err.find(c.expect) != std::string::npos);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK(!std::filesystem::exists(out + "/metrics.csv"));
    CHECK(partial_files(out + "/metrics.csv").empty());
  }
}
