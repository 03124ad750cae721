// kvsim replay --nu-cache on the sample trace: a second run loads every exact value norm from
// the cache and writes identical metrics; off, the default folder and an unusable folder.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>

#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;
namespace fs = std::filesystem;

namespace {

std::string sample_trace() { return source_dir() + "/traces/niah_stories260k.h5"; }

// The number after "key": in summary.json (JsonWriter writes no spaces); -1 when absent.
long long json_number(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  const auto at = json.find(needle);
  if (at == std::string::npos) return -1;
  return std::stoll(json.substr(at + needle.size()));
}

int count_entries(const std::string& dir) {
  int n = 0;
  if (!fs::exists(dir)) return 0;
  for (const auto& e : fs::directory_iterator(dir)) n += e.path().extension() == ".nu";
  return n;
}

const std::string kArgs = " --rules 'critical(snapkv);snapkv' --budgets 0.2,0.5 --eval both --threads 2";

}  // namespace

TEST_CASE("replay twice with --nu-cache: misses then hits, identical metrics.csv") {
  REQUIRE_MESSAGE(fs::exists(sample_trace()), "bundled sample trace missing: " << sample_trace());
  TempDir dir("cli-nu-cache");
  const std::string cache = dir.file("nu");
  const auto r1 = run_kvsim("replay " + sample_trace() + kArgs + " --out " + dir.file("a") + " --nu-cache " + cache);
  REQUIRE_MESSAGE(r1.exit_code == 0, r1.err);
  const auto r2 = run_kvsim("replay " + sample_trace() + kArgs + " --out " + dir.file("b") + " --nu-cache " + cache);
  REQUIRE_MESSAGE(r2.exit_code == 0, r2.err);
  const auto r3 = run_kvsim("replay " + sample_trace() + kArgs + " --out " + dir.file("c") + " --nu-cache off");
  REQUIRE_MESSAGE(r3.exit_code == 0, r3.err);

  const std::string m1 = slurp(dir.file("a/metrics.csv"));
  CHECK(m1.size() > 100);
  CHECK(slurp(dir.file("b/metrics.csv")) == m1);
  CHECK(slurp(dir.file("c/metrics.csv")) == m1);
  CHECK(r2.out == r1.out);

  const std::string s1 = slurp(dir.file("a/summary.json")), s2 = slurp(dir.file("b/summary.json")),
                    s3 = slurp(dir.file("c/summary.json"));
  // One exact L1 norm vector per layer and query head (bounds and critical() both use L1).
  const long long entries = json_number(s1, "num_layers") * json_number(s1, "num_heads");
  REQUIRE(entries > 0);
  CHECK(json_number(s1, "nu_cache_hits") == 0);
  CHECK(json_number(s1, "nu_cache_misses") == entries);
  CHECK(json_number(s2, "nu_cache_hits") == entries);
  CHECK(json_number(s2, "nu_cache_misses") == 0);
  CHECK(json_number(s3, "nu_cache_hits") == 0);
  CHECK(json_number(s3, "nu_cache_misses") == 0);
  CHECK(count_entries(cache) == entries);
}

TEST_CASE("--nu upper after an exact run: critical() finds the exact norms the first run cached") {
  // The exact run computes the norms outside any parallel region (the bounds), the upper run
  // inside one (critical's scoring over heads); with 2 threads the two once keyed differently.
  TempDir dir("cli-nu-upper");
  const std::string cache = dir.file("nu");
  const auto a = run_kvsim("replay " + sample_trace() + kArgs + " --out " + dir.file("a") + " --nu-cache " + cache);
  REQUIRE_MESSAGE(a.exit_code == 0, a.err);
  const auto b = run_kvsim("replay " + sample_trace() + kArgs + " --nu upper --out " + dir.file("b") + " --nu-cache " + cache);
  REQUIRE_MESSAGE(b.exit_code == 0, b.err);
  const std::string s = slurp(dir.file("b/summary.json"));
  CHECK(json_number(s, "nu_cache_misses") == 0);
  CHECK(json_number(s, "nu_cache_hits") == json_number(s, "num_layers") * json_number(s, "num_heads"));
  CHECK(b.err.find("critical(snapkv") != std::string::npos);  // named up front as needing exact norms
}

TEST_CASE("replay without --nu-cache uses $KVSIM_CACHE_DIR") {
  REQUIRE_MESSAGE(fs::exists(sample_trace()), "bundled sample trace missing: " << sample_trace());
  TempDir dir("cli-nu-default");
  const std::string cache = dir.file("env-cache");
  const auto r = run_command("KVSIM_CACHE_DIR='" + cache + "' " + std::string(KVSIM_CLI) + " replay " + sample_trace() +
                             kArgs + " --layers 1 --out " + dir.file("o"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(count_entries(cache) == json_number(slurp(dir.file("o/summary.json")), "num_heads"));
  const auto help = run_kvsim("replay --help");
  CHECK(help.out.find("--nu-cache") != std::string::npos);
}

TEST_CASE("replay with an unusable --nu-cache folder warns once and succeeds with the same metrics") {
  REQUIRE_MESSAGE(fs::exists(sample_trace()), "bundled sample trace missing: " << sample_trace());
  TempDir dir("cli-nu-bad");
  std::ofstream(dir.file("file")) << "not a folder";
  const auto bad = run_kvsim("replay " + sample_trace() + kArgs + " --out " + dir.file("a") + " --nu-cache " +
                             dir.file("file") + "/nu");
  REQUIRE_MESSAGE(bad.exit_code == 0, bad.err);
  const auto first = bad.err.find("warning: nu cache");
  CHECK(first != std::string::npos);
  CHECK(bad.err.find("warning: nu cache", first + 1) == std::string::npos);
  const auto off = run_kvsim("replay " + sample_trace() + kArgs + " --out " + dir.file("b") + " --nu-cache off");
  REQUIRE_MESSAGE(off.exit_code == 0, off.err);
  CHECK(slurp(dir.file("a/metrics.csv")) == slurp(dir.file("b/metrics.csv")));
  const auto empty = run_kvsim("replay " + sample_trace() + kArgs + " --out " + dir.file("c") + " --nu-cache ''");
  CHECK(empty.exit_code != 0);
  CHECK(empty.err.find("--nu-cache") != std::string::npos);
}
