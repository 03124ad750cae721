// End-to-end tests of `kvsim synth`, `kvsim info` and `kvsim validate`.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include "testutil/testutil.h"

using namespace kvsim::test;
namespace fs = std::filesystem;

namespace {

const char* kSmall = "--layers 2 --heads 4 --kv-heads 2 --head-dim 8 --hidden 16 --seq-len 200 --question-len 8 "
                     "--gen-len 8 --window 32";

int lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST_CASE("cli: synth, info, validate on a small trace") {
  TempDir tmp("cli-trace");
  const std::string p = tmp.file("s.h5");
  RunResult r = run_kvsim("synth --out " + p + " " + kSmall + " --dtype bfloat16 --seed 4");
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out.find("wrote " + p) != std::string::npos);
  CHECK(fs::exists(p));
  CHECK(partial_files(p).empty());

  r = run_kvsim("info " + p);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out.find("2 layers, 4 heads, 2 KV heads (group 2), head_dim 8, hidden 16") != std::string::npos);
  CHECK(r.out.find("S = 200: context 184, question 8, generated 8 (prefill_len 192)") != std::string::npos);
  CHECK(r.out.find("Nq = 48 at 152-199") != std::string::npos);
  CHECK(r.out.find("window before the compression point: 32; evaluation queries (>= 184): 16") != std::string::npos);
  CHECK(r.out.find("storage     bfloat16; o_proj yes, o no") != std::string::npos);
  CHECK(r.out.find("span        needle [") != std::string::npos);
  CHECK(r.out.find("stats") == std::string::npos);

  r = run_kvsim("info --stats " + p);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  CHECK(r.out.find("read 2 layers in") != std::string::npos);
  CHECK(r.out.find("peak RSS") != std::string::npos);

  r = run_kvsim("validate " + p + " --window 32");
  CHECK(r.exit_code == 0);
  CHECK(r.out == "OK " + p + "\n");
  r = run_kvsim("validate " + p + " --window 64 --no-scan");
  CHECK(r.exit_code == 1);
  CHECK(lines(r.out) == 1);
  CHECK(r.out.find(p + ": /q_pos: observation window [120, 184)") == 0);
  CHECK(r.err.find("1 problem in " + p) != std::string::npos);

  // Same seed, other options: queries=all, interleaved RoPE, float16 with gzip, no o_proj.
  const std::string p2 = tmp.file("all.h5");
  r = run_kvsim("synth --out " + p2 + " " + kSmall +
                " --queries all --rope-style interleaved --dtype float16 --gzip --no-o-proj --seed 4");
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  r = run_kvsim("info " + p2);
  CHECK(r.out.find("Nq = 200 at 0-199") != std::string::npos);
  CHECK(r.out.find("rope        interleaved") != std::string::npos);
  CHECK(r.out.find("storage     float16; o_proj no, o no") != std::string::npos);
  CHECK(run_kvsim("validate " + p2).exit_code == 0);
}

TEST_CASE("cli: bad arguments exit 2 with one line; bad files exit 1 with one line naming the file") {
  TempDir tmp("cli-trace-bad");
  const std::string out = tmp.file("x.h5");
  for (const std::string& args : std::vector<std::string>{"synth", "synth --out " + out + " --kv-heads 3", "synth --out " + out + " --dtype float8",
        "synth --out " + out + " --queries some", "synth --out " + out + " --seq-len 10 --question-len 8 --gen-len 8",
        "synth --out " + out + " --head-dim 7", "synth --out " + out + " --bogus", "info", "info a.h5 b.h5",
        "validate", "validate " + out + " --window -1", "validate --window x " + out}) {
    CAPTURE(args);
    const RunResult r = run_kvsim(args);
    CHECK(r.exit_code == 2);
    CHECK(lines(r.err) == 1);
    CHECK(r.out.empty());
  }
  CHECK(!fs::exists(out));

  const std::string missing = tmp.file("missing.h5");
  for (const std::string& cmd : std::vector<std::string>{"info ", "info --stats ", "validate "}) {
    CAPTURE(cmd);
    const RunResult r = run_kvsim(cmd + missing);
    CHECK(r.exit_code == 1);
    const std::string& msg = cmd == "validate " ? r.out : r.err;
    CHECK(msg.find(missing + ": no such file") != std::string::npos);
    CHECK(lines(msg) == 1);
  }
  const std::string text = tmp.file("notes.txt");
  std::ofstream(text) << "hello\n";
  RunResult r = run_kvsim("info " + text);
  CHECK(r.exit_code == 1);
  CHECK(r.err == "kvsim info: error: " + text + ": not an HDF5 file (no HDF5 signature)\n");

  // An unwritable destination: one line, exit 1, no file left behind.
  const std::string bad_out = tmp.file("no/such/dir/t.h5");
  r = run_kvsim("synth --out " + bad_out + " " + kSmall);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("cannot create the file") != std::string::npos);
  CHECK(lines(r.err) == 1);
  CHECK(!fs::exists(bad_out));
  CHECK(partial_files(bad_out).empty());
}
