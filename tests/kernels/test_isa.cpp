// ISA selection: the strict KVSIM_FORCE_ISA rule, and a child process that runs under it.
#include <cstdlib>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include "kernel_test_util.h"
#include "testutil/testutil.h"

namespace k = kvsim::kernels;

TEST_CASE("choose_isa: auto picks the best set, a named set is used or refused, typos are errors") {
  const k::CpuIsas none{}, avx2{true, false}, both{true, true};
  CHECK(k::choose_isa(nullptr, both) == k::Isa::avx512);
  CHECK(k::choose_isa("", avx2) == k::Isa::avx2);
  CHECK(k::choose_isa("auto", none) == k::Isa::scalar);
  CHECK(k::choose_isa("scalar", both) == k::Isa::scalar);
  CHECK(k::choose_isa("avx2", both) == k::Isa::avx2);
  CHECK(k::choose_isa("avx512", both) == k::Isa::avx512);
  CHECK_THROWS_WITH_AS(k::choose_isa("avx512", avx2), doctest::Contains("does not support avx512"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(k::choose_isa("avx2", none), doctest::Contains("does not support avx2"), std::invalid_argument);
  for (const char* typo : {"AVX512", "avx-512", "sclar", "avx", "native"})
    CHECK_THROWS_WITH_AS(k::choose_isa(typo, both), doctest::Contains("unknown value"), std::invalid_argument);
  CHECK(std::string(k::isa_name(k::Isa::scalar)) == "scalar");
  CHECK(std::string(k::isa_name(k::Isa::avx2)) == "avx2");
  CHECK(std::string(k::isa_name(k::Isa::avx512)) == "avx512");
  CHECK(both.best() == k::Isa::avx512);
  CHECK(avx2.best() == k::Isa::avx2);
}

// Run only as a child (below): checks the ISA chosen at first use in a fresh process.
TEST_CASE("isa child process check") {
  const char* expect = std::getenv("KVSIM_TEST_EXPECT_ISA");
  if (!expect) return;
  CHECK(std::string(k::isa_name(k::active_isa())) == expect);
}

TEST_CASE("KVSIM_FORCE_ISA is respected by a fresh process, and a bad value stops it") {
  const std::string self = "/proc/" + std::to_string(::getpid()) + "/exe";
  auto child = [&](const std::string& env) {
    return kvsim::test::run_command("env -u KVSIM_FORCE_ISA " + env + " " + self + " -tc='isa child process check'");
  };
  for (k::Isa isa : {k::Isa::scalar, k::Isa::avx2, k::Isa::avx512}) {
    const std::string name = k::isa_name(isa);
    const auto r = child("KVSIM_FORCE_ISA=" + name + " KVSIM_TEST_EXPECT_ISA=" + name);
    INFO(name << ": " << r.out << r.err);
    if (k::cpu_isas().supports(isa)) {
      CHECK(r.exit_code == 0);
      CHECK(r.out.find("1 passed") != std::string::npos);
    } else {
      CHECK(r.exit_code == 77);  // doctest_main: skipped, with the reason
      CHECK(r.err.find("does not support " + name) != std::string::npos);
    }
  }
  const std::string best = k::isa_name(k::cpu_isas().best());
  const auto plain = child("KVSIM_TEST_EXPECT_ISA=" + best);
  INFO(plain.out << plain.err);
  CHECK(plain.exit_code == 0);
  // A wrong expectation must fail, so the child check can fail at all.
  CHECK(child("KVSIM_FORCE_ISA=scalar KVSIM_TEST_EXPECT_ISA=avx512").exit_code != 0);
  const auto typo = child("KVSIM_FORCE_ISA=avx-512 KVSIM_TEST_EXPECT_ISA=scalar");
  CHECK(typo.exit_code == 2);
  CHECK(typo.err.find("unknown value 'avx-512'") != std::string::npos);
}

TEST_CASE("check_isa_setting names the variable (what the CLI and the Python module print)") {
  const char* old = std::getenv("KVSIM_FORCE_ISA");
  const std::string saved = old ? old : "";
  ::setenv("KVSIM_FORCE_ISA", "avx1024", 1);
  CHECK_THROWS_WITH(k::check_isa_setting(), doctest::Contains("KVSIM_FORCE_ISA: unknown value 'avx1024'"));
  ::setenv("KVSIM_FORCE_ISA", "scalar", 1);
  CHECK_NOTHROW(k::check_isa_setting());
  if (old) ::setenv("KVSIM_FORCE_ISA", saved.c_str(), 1); else ::unsetenv("KVSIM_FORCE_ISA");
}
