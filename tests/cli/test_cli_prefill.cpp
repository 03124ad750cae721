// End-to-end tests of `kvsim prefill`: a synthetic trace storing every query, the real
// stories260K needle trace, the error paths, and --bench on a tiny shape.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "testutil/testutil.h"
#include "trace/synthetic.h"

using namespace kvsim;
using kvsim::test::run_kvsim;
using kvsim::test::slurp;
using kvsim::test::partial_files;
namespace fs = std::filesystem;

namespace {

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string l; std::getline(ss, l);) out.push_back(l);
  return out;
}

SynthOptions small_trace(bool all_queries) {
  SynthOptions o;
  o.num_layers = 3;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.head_dim = 16;
  o.hidden_size = 32;
  o.seq_len = 600;
  o.question_len = 16;
  o.gen_len = 8;
  o.window = 32;
  o.needle_len = 8;
  o.all_queries = all_queries;
  o.seed = 3;
  return o;
}

const char* kSmallArgs = " --segment 64 --block 16 --budget 64 --threshold 128 --locality-anchors 3";

}  // namespace

TEST_CASE("kvsim prefill: synthetic trace with every query stored, fusion both") {
  test::TempDir dir("cli-prefill");
  const std::string trace = dir.file("t.h5"), out = dir.file("out");
  write_synthetic_trace(trace, small_trace(true), WriteOptions{});
  const auto r = run_kvsim("prefill " + trace + " --out " + out + kSmallArgs + " --fusion both");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("fusion on:") != std::string::npos);
  CHECK(r.out.find("locality J(1)") != std::string::npos);
  for (const char* f : {"metrics.csv", "locality.csv", "summary.json"}) {
    CHECK(fs::exists(out + "/" + f));
    CHECK(partial_files(out + "/" + f).empty());
  }
  const auto m = lines(slurp(out + "/metrics.csv"));
  REQUIRE(!m.empty());
  CHECK(m[0].rfind("layer,head,fusion,n_sparse_queries,retained_mass,retained_mass_min,pert_l1", 0) == 0);
  CHECK(m.size() == 1 + 3 * 2 * (4 + 1));  // layers x {on, off} x (heads + layer row)
  // prompt 584 tokens: segments of 64 -> 10 segments, 0-1 dense (< 128), the last dense.
  const i64 sparse_q = 7 * 64;
  bool saw_sparse = false;
  for (std::size_t i = 1; i < m.size(); ++i) {
    if (m[i].rfind("0,", 0) == 0) CHECK(m[i].find(",0,,,") != std::string::npos);  // layer 0 is dense
    if (m[i].rfind("2,-1,on," + std::to_string(sparse_q) + ",", 0) == 0) saw_sparse = true;
  }
  CHECK(saw_sparse);
  const std::string loc = slurp(out + "/locality.csv");
  CHECK(loc.rfind("layer,head,delta,jaccard,pairs\n", 0) == 0);
  CHECK(lines(loc).size() > 100);
  const std::string js = slurp(out + "/summary.json");
  for (const char* key : {"\"segments\":10", "\"dense_segments\":3", "\"sparse_segments\":7", "\"top_k\":4",
                          "\"kept_keys_per_segment\":128", "\"fusion\":\"both\"", "\"projected\":true",
                          "\"peak_rss_bytes\"", "\"estimate_seconds\""})
    CHECK_MESSAGE(js.find(key) != std::string::npos, key);
}

TEST_CASE("kvsim prefill: a trace without every prompt query is refused, naming /q_pos") {
  test::TempDir dir("cli-prefill-window");
  const std::string trace = dir.file("w.h5"), out = dir.file("out");
  write_synthetic_trace(trace, small_trace(false), WriteOptions{});
  const auto r = run_kvsim("prefill " + trace + " --out " + out + kSmallArgs);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("/q_pos") != std::string::npos);
  CHECK(r.err.find("position 0 is not stored") != std::string::npos);
  CHECK(std::count(r.err.begin(), r.err.end(), '\n') <= 2);  // one line (plus progress)
  CHECK(!fs::exists(out + "/summary.json"));
  CHECK(!fs::exists(out + "/metrics.csv"));
}

TEST_CASE("kvsim prefill: usage errors") {
  CHECK(run_kvsim("prefill --bench --fusion maybe").exit_code == 2);
  const auto r = run_kvsim("prefill --bench --segment 100 --block 32");
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("--segment: 100 is not a multiple of --block 32") != std::string::npos);
  CHECK(run_kvsim("prefill /nonexistent.h5 --out /tmp/x").exit_code == 1);
  CHECK(run_kvsim("prefill --help").exit_code == 0);
}

TEST_CASE("kvsim prefill --bench: tiny shape, JSON written") {
  test::TempDir dir("cli-prefill-bench");
  const std::string js = dir.file("bench.json");
  const auto r = run_kvsim("prefill --bench --lengths 256,320 --heads 4 --kv-heads 2 --head-dim 32 --segment 64 "
                           "--block 16 --budget 64 --threshold 64 --json " + js);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("speedup") != std::string::npos);
  const std::string j = slurp(js);
  CHECK(j.find("\"n\":256") != std::string::npos);
  CHECK(j.find("\"n\":320") != std::string::npos);
  CHECK(j.find("\"dense_segment_max_abs_diff\":0") != std::string::npos);  // same code path, same rows
}

TEST_CASE("kvsim prefill: the real stories260K needle trace (all queries stored)") {
  const std::string trace = test::source_dir() + "/traces/niah_stories260k.h5";
  if (!fs::exists(trace)) {
    MESSAGE("traces/niah_stories260k.h5 not present; skipped");
    return;
  }
  test::TempDir dir("cli-prefill-niah");
  const std::string out = dir.file("out");
  const auto r = run_kvsim("prefill " + trace + " --out " + out +
                           " --segment 128 --block 16 --budget 256 --threshold 256 --fusion both --locality-anchors 2");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const auto m = lines(slurp(out + "/metrics.csv"));
  CHECK(m.size() == 1 + 5 * 2 * (8 + 1));
  // prefill_len 2048 = 16 segments of 128: 2 below the threshold + the last are dense.
  const std::string js = slurp(out + "/summary.json");
  CHECK(js.find("\"prompt_len\":2048") != std::string::npos);
  CHECK(js.find("\"sparse_queries_per_layer\":1664") != std::string::npos);
  // Retained mass is a fraction of the attention: every layer row in (0, 1].
  for (std::size_t i = 1; i < m.size(); ++i) {
    if (m[i].find(",-1,") == std::string::npos || m[i].rfind("0,", 0) == 0) continue;
    std::stringstream ss(m[i]);
    std::string f[5];
    for (auto& x : f) std::getline(ss, x, ',');
    const double F = std::stod(f[4]);
    CHECK(F > 0.0);
    CHECK(F <= 1.0);
  }
}
