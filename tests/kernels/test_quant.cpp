// KV quantization kernels (rules doc 2.33): the SIMD set bit-exact with the scalar reference on
// every group size and tail, scalar against hand-checked values and a plain float64 restatement
// (the numpy reference is tests/python/test_quant.py).
#include "kernel_test_util.h"

#include <tuple>

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

namespace {

// Values with ties on the rounding grid, signed zeros and wide magnitudes.
std::vector<float> hostile(i64 n, std::uint64_t seed) {
  auto v = uniform(n, -3.0f, 3.0f, seed);
  for (i64 i = 0; i < n; i += 7) v[i] = std::ldexp(static_cast<float>(i % 13) - 6.0f, -static_cast<int>(i % 20));
  for (i64 i = 3; i < n; i += 11) v[i] = (i % 2) ? -0.0f : 0.0f;
  for (i64 i = 5; i < n; i += 17) v[i] = static_cast<float>(i % 9) * 0.5f + 0.25f;  // x.25 / x.75: ties at step 0.5
  for (i64 i = 9; i < n; i += 29) v[i] = (i % 2 ? 1.0f : -1.0f) * std::ldexp(1.0f, static_cast<int>(i % 40) - 20);
  return v;
}

}  // namespace

TEST_CASE("group_min_max, quant_affine, quant_minifloat: SIMD equals scalar bit for bit") {
  if (!have_simd()) return;
  for (i64 g : {1, 3, 4, 7, 8, 9, 16, 31, 32, 33, 64, 128}) {
    for (i64 groups : {1, 2, 5}) {
      CAPTURE(g);
      CAPTURE(groups);
      const i64 n = g * groups;
      const auto x = hostile(n, static_cast<std::uint64_t>(g * 100 + groups));
      std::vector<float> mn0(groups), mx0(groups), mn1(groups), mx1(groups);
      k::scalar::group_min_max(x.data(), groups, g, mn0.data(), mx0.data());
      simd::group_min_max(x.data(), groups, g, mn1.data(), mx1.data());
      for (i64 i = 0; i < groups; ++i) {
        REQUIRE(same_float(mn0[i], mn1[i]));
        REQUIRE(same_float(mx0[i], mx1[i]));
      }
      std::vector<double> scale(groups), zero(groups);
      for (i64 i = 0; i < groups; ++i) {
        scale[i] = (i % 2) ? 0.5 : std::ldexp(1.3, -3 - static_cast<int>(i));
        zero[i] = (i % 3) ? mn0[i] : -1.0;
      }
      for (auto [lo, hi] : {std::pair{0, 3}, {0, 255}, {-7, 7}, {-127, 127}}) {
        std::vector<std::int16_t> c0(n), c1(n);
        std::vector<float> y0(n), y1(n);
        k::scalar::quant_affine(x.data(), groups, g, scale.data(), zero.data(), lo, hi, c0.data(), y0.data());
        simd::quant_affine(x.data(), groups, g, scale.data(), zero.data(), lo, hi, c1.data(), y1.data());
        for (i64 j = 0; j < n; ++j) {
          REQUIRE(c0[j] == c1[j]);
          REQUIRE(same_float(y0[j], y1[j]));
        }
      }
      for (auto [mant, min_exp, max] : {std::tuple{3, -6, 448.0}, {2, -14, 57344.0}}) {
        auto wide = x;
        for (i64 j = 0; j < n; j += 5) wide[j] *= 300.0f;  // saturation
        std::vector<float> y0(n), y1(n);
        k::scalar::quant_minifloat(wide.data(), n, mant, min_exp, max, y0.data());
        simd::quant_minifloat(wide.data(), n, mant, min_exp, max, y1.data());
        for (i64 j = 0; j < n; ++j) REQUIRE(same_float(y0[j], y1[j]));
      }
    }
  }
}

TEST_CASE("quant_affine: half to even, clamped, xhat = q scale + zero") {
  const std::vector<float> x = {0.0f, 0.25f, 0.75f, 1.25f, 2.0f, -1.0f, 9.0f, 0.5f};
  const double scale = 0.5, zero = 0.0;
  std::vector<std::int16_t> c(x.size());
  std::vector<float> y(x.size());
  k::scalar::quant_affine(x.data(), 1, static_cast<i64>(x.size()), &scale, &zero, 0, 3, c.data(), y.data());
  // 0.25 / 0.5 = 0.5 -> 0 (even), 0.75 -> 1.5 -> 2, 1.25 -> 2.5 -> 2, 2.0 -> 4 -> 3 (clamp), -1 -> 0.
  CHECK(c == std::vector<std::int16_t>{0, 0, 2, 2, 3, 0, 3, 1});
  CHECK(y == std::vector<float>{0.0f, 0.0f, 1.0f, 1.0f, 1.5f, 0.0f, 1.5f, 0.5f});
}

TEST_CASE("quant_minifloat: OCP E4M3 / E5M2 grid, ties to even, subnormals, saturation") {
  const std::vector<float> x = {1.0f, 1.0625f, 1.1875f, 448.0f, 500.0f, -1e6f, 0.001953125f, 0.0029296875f,
                                -0.0f, 3.0f};
  std::vector<float> y(x.size());
  k::scalar::quant_minifloat(x.data(), static_cast<i64>(x.size()), 3, -6, 448.0, y.data());
  // E4M3: step 1/8 in [1, 2): 1.0625 ties to 1.0, 1.1875 ties to 1.25; 500 and -1e6 saturate;
  // 2^-9 is the smallest subnormal, 1.5 x 2^-9 ties to 2 x 2^-9.
  CHECK(y == std::vector<float>{1.0f, 1.0f, 1.25f, 448.0f, 448.0f, -448.0f, 0.001953125f, 0.00390625f, -0.0f, 3.0f});
  CHECK(std::signbit(y[8]));
  k::scalar::quant_minifloat(x.data(), static_cast<i64>(x.size()), 2, -14, 57344.0, y.data());
  // E5M2: step 1/4 in [1, 2): 1.0625 -> 1.0, 1.1875 -> 1.25; 448 and 500 on the grid of 64 in [256, 512).
  CHECK(y[0] == 1.0f);
  CHECK(y[1] == 1.0f);
  CHECK(y[2] == 1.25f);
  CHECK(y[3] == 448.0f);
  CHECK(y[4] == 512.0f);
  CHECK(y[5] == -57344.0f);
}
