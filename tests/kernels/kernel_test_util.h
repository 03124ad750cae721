#pragma once
// Helpers for the kernel tests: seeded random inputs, ulp distances, the AVX-512 guard.
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

// Sizes that exercise the 16-lane tails and the unrolled main loops.
inline const std::vector<i64> kSizes = {1, 2, 15, 16, 17, 31, 33, 63, 64, 65, 100, 1000, 4099};

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

// True when the AVX-512 kernels can run here; otherwise records why a comparison is skipped.
inline bool have_avx512() {
  if (kernels::cpu_has_avx512()) return true;
  MESSAGE("CPU/OS without AVX-512: AVX-512 vs scalar comparison skipped");
  return false;
}

}  // namespace kvsim::ktest
