#pragma once
// Helpers for the kernel tests: seeded random inputs, ulp distances, the SIMD set under test.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "kernels/isa.h"
#include "kernels/kernels.h"

namespace kvsim::ktest {

// Sizes that exercise the 8- and 16-lane tails and the unrolled main loops of both SIMD sets.
inline const std::vector<i64> kSizes = {1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 100, 1000, 4099};

inline std::vector<float> uniform(i64 n, float lo, float hi, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<std::uint8_t> random_mask(i64 n, double p_keep, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution keep(p_keep);
  std::vector<std::uint8_t> m(static_cast<std::size_t>(n));
  for (auto& b : m) b = keep(rng) ? static_cast<std::uint8_t>(1 + rng() % 255) : 0;
  return m;
}

inline std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// Same bits, or both NaN.
inline bool same_float(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || bits_of(a) == bits_of(b);
}

// Distance in representable floats (a and b finite or equal infinities).
inline std::int64_t ulp_distance(float a, float b) {
  auto ordered = [](float f) {
    const std::int64_t u = bits_of(f);
    return (u & 0x80000000) ? -(u & 0x7fffffff) : u;
  };
  return std::llabs(ordered(a) - ordered(b));
}

constexpr double kEps = std::numeric_limits<float>::epsilon();  // 2^-23

// The SIMD set the direct-call comparisons of these tests exercise: AVX-512 in test_kernels,
// AVX2 in test_kernels_avx2 (the same sources built with KVSIM_TEST_SIMD=avx2).
#ifndef KVSIM_TEST_SIMD
#define KVSIM_TEST_SIMD avx512
#endif
namespace simd = kernels::KVSIM_TEST_SIMD;
constexpr kernels::Isa kSimdIsa = kernels::Isa::KVSIM_TEST_SIMD;

// True when that set can run here; otherwise records why a comparison is skipped.
inline bool have_simd() {
  if (kernels::cpu_isas().supports(kSimdIsa)) return true;
  MESSAGE("CPU/OS without " << std::string(kernels::isa_name(kSimdIsa)) << ": its comparison with scalar is skipped");
  return false;
}

}  // namespace kvsim::ktest
