// ISA selection: the KVSIM_FORCE_ISA rule, and a child process that runs under the variable.
#include <cstdlib>
#include <string>

#include <unistd.h>

#include "kernel_test_util.h"
#include "testutil/testutil.h"

namespace k = kvsim::kernels;

TEST_CASE("choose_isa: scalar forced by KVSIM_FORCE_ISA=scalar, else the CPU decides") {
  CHECK(k::choose_isa("scalar", true) == k::Isa::scalar);
  CHECK(k::choose_isa("scalar", false) == k::Isa::scalar);
  CHECK(k::choose_isa(nullptr, true) == k::Isa::avx512);
  CHECK(k::choose_isa(nullptr, false) == k::Isa::scalar);
  CHECK(k::choose_isa("", true) == k::Isa::avx512);
  CHECK(k::choose_isa("avx512", false) == k::Isa::scalar);  // never an ISA the CPU lacks
  CHECK(std::string(k::isa_name(k::Isa::scalar)) == "scalar");
  CHECK(std::string(k::isa_name(k::Isa::avx512)) == "avx512");
}

// Run only as a child (below): checks the ISA chosen at first use in a fresh process.
TEST_CASE("isa child process check") {
  const char* expect = std::getenv("KVSIM_TEST_EXPECT_ISA");
  if (!expect) return;
  CHECK(std::string(k::isa_name(k::active_isa())) == expect);
}

TEST_CASE("KVSIM_FORCE_ISA=scalar is respected by a fresh process") {
  const std::string self = "/proc/" + std::to_string(::getpid()) + "/exe";
  const auto forced = kvsim::test::run_command("KVSIM_FORCE_ISA=scalar KVSIM_TEST_EXPECT_ISA=scalar " + self +
                                               " -tc='isa child process check'");
  INFO(forced.out << forced.err);
  CHECK(forced.exit_code == 0);
  CHECK(forced.out.find("1 passed") != std::string::npos);
  const std::string native = k::cpu_has_avx512() ? "avx512" : "scalar";
  const auto plain = kvsim::test::run_command("env -u KVSIM_FORCE_ISA KVSIM_TEST_EXPECT_ISA=" + native + " " + self +
                                              " -tc='isa child process check'");
  INFO(plain.out << plain.err);
  CHECK(plain.exit_code == 0);
  // And a wrong expectation must fail, so the child check can fail at all.
  const auto wrong = kvsim::test::run_command("KVSIM_FORCE_ISA=scalar KVSIM_TEST_EXPECT_ISA=avx512 " + self +
                                              " -tc='isa child process check'");
  CHECK(wrong.exit_code != 0);
}
