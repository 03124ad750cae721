// The BLAS kernels kvsim runs (core/blas_kernels.h): recorded, and never a generic core on a CPU
// with AVX2/AVX-512 unless the user asks for one.
#include <doctest/doctest.h>

#include <string>

#include "core/blas_kernels.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

// `kvsim --version` in a clean BLAS environment plus `env_vars`: its BLAS line.
std::string blas_line(const std::string& env_vars) {
  const RunResult r = run_command("env -u OPENBLAS_CORETYPE -u KVSIM_BLAS_CORETYPE " + env_vars + " '" + KVSIM_CLI +
                                  "' --version");
  REQUIRE(r.exit_code == 0);
  const auto at = r.out.find("BLAS: ");
  REQUIRE(at != std::string::npos);
  return r.out.substr(at, r.out.find('\n', at) - at);
}

std::string core_of(const std::string& line) {
  const auto at = line.find("; core ") + 7;
  return line.substr(at, line.find(' ', at) - at);
}

}  // namespace

TEST_CASE("blas: the kernels match the CPU unless the user chooses; the choice is recorded") {
  const std::string cpu = cpu_blas_coretype();
  const std::string native = blas_line("KVSIM_BLAS_CORETYPE=native");  // OpenBLAS's own detection
  INFO(native);
  CHECK(native.find("chosen by OpenBLAS") != std::string::npos);

  const std::string chosen = blas_line("");
  INFO(chosen);
  CHECK(blas_core_level(core_of(chosen)) >= blas_core_level(cpu));
  if (blas_core_level(core_of(native)) < blas_core_level(cpu)) {  // a generic core, detected and corrected
    CHECK(chosen.find("chosen by kvsim, OpenBLAS had picked " + core_of(native)) != std::string::npos);
    CHECK(core_of(chosen) == cpu);
  } else {
    CHECK(chosen.find("chosen by OpenBLAS") != std::string::npos);
  }

  const std::string user = blas_line("OPENBLAS_CORETYPE=Prescott");  // the user's own choice wins
  CHECK(core_of(user) == "Prescott");
  CHECK(user.find("chosen by OPENBLAS_CORETYPE") != std::string::npos);
  const std::string forced = blas_line("KVSIM_BLAS_CORETYPE=Prescott");
  CHECK(core_of(forced) == "Prescott");
  CHECK(forced.find("chosen by KVSIM_BLAS_CORETYPE") != std::string::npos);
}

TEST_CASE("blas: summary.json records the library, core, threading and chooser") {
  TempDir dir("blas-summary");
  const std::string trace = dir.file("t.h5");
  write_synthetic_trace(trace, small_shape(2, 320), WriteOptions{});
  const RunResult r = run_kvsim("replay " + trace + " --rules snapkv --budgets 0.3 --out " + dir.file("o"));
  REQUIRE(r.exit_code == 0);
  const std::string summary = slurp(dir.file("o/summary.json"));
  for (const char* field : {"\"blas\"", "\"config\"", "\"core\"", "\"threading\"", "\"chosen_by\""})
    CHECK(summary.find(field) != std::string::npos);
  CHECK(summary.find("OpenBLAS 0.") != std::string::npos);
}
