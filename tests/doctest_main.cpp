// The main of every C++ test suite. ctest runs each suite once per ISA (KVSIM_FORCE_ISA =
// scalar, avx2, avx512; tests/CMakeLists.txt); a forced ISA this CPU lacks skips the run
// (exit 77, ctest's SKIP_RETURN_CODE) instead of failing, and a bad value fails it.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "kernels/isa.h"

int main(int argc, char** argv) {
  namespace k = kvsim::kernels;
  if (const char* forced = std::getenv("KVSIM_FORCE_ISA")) {
    try {
      (void)k::choose_isa(forced, k::cpu_isas());
    } catch (const std::invalid_argument& e) {
      std::fprintf(stderr, "KVSIM_FORCE_ISA=%s: %s\n", forced, e.what());
      const bool known = std::string(forced) == "avx2" || std::string(forced) == "avx512";
      return known ? 77 : 2;
    }
  }
  doctest::Context context(argc, argv);
  return context.run();
}
