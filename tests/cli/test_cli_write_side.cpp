// The write side of kvsim replay (docs/hostile-input.md, "write-side guarantees"): a full disk,
// a second run into the same folder, and the outputs of an earlier run.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "testutil/testutil.h"
#include "trace/synthetic.h"

using namespace kvsim;
using namespace kvsim::test;
namespace fs = std::filesystem;

namespace {

std::string small_trace(const TempDir& dir) {
  const std::string path = dir.file("t.h5");
  write_synthetic_trace(path, small_shape(2, 320), WriteOptions{});
  return path;
}

int error_lines(const std::string& err) {
  int n = 0;
  std::size_t at = 0;
  while ((at = err.find("error:", at)) != std::string::npos) ++n, ++at;
  return n;
}

const char* kRun = " --rules 'snapkv;tova;streaming' --budgets 0.2,0.4 --nu-cache off";

// The CLI under a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored): every write past `kib` KiB
// fails with EFBIG as on a full disk, without needing a small filesystem.
RunResult run_with_disk_of(int kib, const std::string& args) {
  return run_command("sh -c \"trap '' XFSZ; ulimit -f " + std::to_string(kib) + "; exec '" + KVSIM_CLI + "' " +
                     args + "\"");
}

}  // namespace

TEST_CASE("write side: a full disk during selection.h5 ends in one line, exit 1, nothing left") {
  TempDir dir("write-full");
  const std::string trace = small_trace(dir);
  for (int kib : {8, 20, 32}) {
    CAPTURE(kib);
    const std::string out = dir.file("o" + std::to_string(kib));
    const RunResult r = run_with_disk_of(kib, "replay " + trace + kRun + " --save-selection --out " + out);
    INFO(r.err);
    CHECK(r.exit_code == 1);  // not 139: a failed HDF5 write leaves nothing for the library's teardown
    CHECK(error_lines(r.err) == 1);
    CHECK(r.err.find("selection.h5") != std::string::npos);
    CHECK(r.err.find("write failed") != std::string::npos);
    CHECK(!fs::exists(out));  // the folder this run created goes with its partial files
  }
}

TEST_CASE("write side: a failed run leaves the earlier results as they were") {
  TempDir dir("write-keep");
  const std::string trace = small_trace(dir);
  const std::string out = dir.file("o");
  REQUIRE(run_kvsim("replay " + trace + kRun + " --out " + out).exit_code == 0);
  const std::string metrics = slurp(out + "/metrics.csv"), summary = slurp(out + "/summary.json");
  const RunResult r = run_with_disk_of(20, "replay " + trace + kRun + " --save-selection --out " + out);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("were replaced") == std::string::npos);
  CHECK(slurp(out + "/metrics.csv") == metrics);
  CHECK(slurp(out + "/summary.json") == summary);
  CHECK(!fs::exists(out + "/selection.h5"));
  CHECK(partial_files(out).empty());
}

TEST_CASE("write side: the outputs an earlier run wrote and this one does not are removed after success") {
  TempDir dir("write-stale");
  const std::string trace = small_trace(dir);
  const std::string out = dir.file("o");
  RunResult r = run_kvsim("replay " + trace + kRun + " --per-query --save-selection --out " + out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("were replaced") == std::string::npos);
  REQUIRE(fs::exists(out + "/metrics_per_query.csv"));
  REQUIRE(fs::exists(out + "/selection.h5"));
  fs::path user_file = fs::path(out) / "notes.txt";  // not a kvsim output: never touched
  { std::ofstream(user_file) << "mine\n"; }

  r = run_kvsim("replay " + trace + " --rules snapkv --budgets 0.2 --nu-cache off --out " + out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.find("held the results of an earlier run (summary.json); they were replaced") != std::string::npos);
  CHECK(fs::exists(out + "/metrics.csv"));
  CHECK(!fs::exists(out + "/metrics_per_query.csv"));
  CHECK(!fs::exists(out + "/selection.h5"));
  CHECK(fs::exists(user_file));
  CHECK(slurp(out + "/metrics.csv").find("tova") == std::string::npos);
}

TEST_CASE("write side: a second run into a folder another run is writing fails at once") {
  TempDir dir("write-lock");
  const std::string trace = small_trace(dir);
  const std::string out = dir.file("o");
  fs::create_directories(out);
  // Hold the folder as a running kvsim would (flock on the folder; released when the fd closes).
  const int fd = ::open(out.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::flock(fd, LOCK_EX | LOCK_NB) == 0);
  for (const char* cmd : {"replay", "prefill", "analyze"}) {
    CAPTURE(cmd);
    const std::string args = std::string(cmd) + " " + trace + " --out " + out +
                             (std::string(cmd) == "replay" ? kRun : "");
    const RunResult r = run_kvsim(args);
    INFO(r.err);
    CHECK(r.exit_code == 1);
    CHECK(error_lines(r.err) == 1);
    CHECK(r.err.find("another kvsim run is writing this folder") != std::string::npos);
    CHECK(fs::is_empty(out));
  }
  ::close(fd);
  CHECK(run_kvsim("replay " + trace + kRun + " --out " + out).exit_code == 0);
}
