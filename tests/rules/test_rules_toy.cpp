// Worked toy examples of the selection-rules spec, section 8.1-8.3, with hand-computed numbers.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "rules/ada.h"
#include "rules/critical.h"
#include "rules/pyramid.h"

using namespace kvsim;

namespace {
// Ada-KV toy (8.1): head 1 concentrated, head 2 dispersed, b = 2, no window.
const float kAda[2][4] = {{0.7f, 0.1f, 0.1f, 0.1f}, {0.3f, 0.25f, 0.25f, 0.2f}};

double retained(const float* s, int m, i64 k) {  // sum of the top-k entries (toy sizes)
  std::vector<float> v(s, s + m);
  std::sort(v.begin(), v.end(), std::greater<>());
  return std::accumulate(v.begin(), v.begin() + k, 0.0);
}
}  // namespace

TEST_CASE("8.1 Ada-KV: uniform vs flattened allocation") {
  const float* flat = &kAda[0][0];
  // Uniform: sum F = 0.8 + 0.55 = 1.35, bound 2C * (0.2 + 0.45) = 1.3 C.
  const double f_uniform = retained(kAda[0], 4, 2) + retained(kAda[1], 4, 2);
  CHECK(f_uniform == doctest::Approx(1.35));
  CHECK(2 * (2 - f_uniform) == doctest::Approx(1.3));
  // Flattened top-4: n = (1, 3), sum F = 0.7 + 0.8 = 1.5, bound 1.0 C.
  const auto n = ada_flattened_counts(flat, 2, 4, 4);
  CHECK(n == std::vector<i64>{1, 3});
  const double f_flat = retained(kAda[0], 4, n[0]) + retained(kAda[1], 4, n[1]);
  CHECK(f_flat == doctest::Approx(1.5));
  CHECK(2 * (2 - f_flat) == doctest::Approx(1.0));
}

TEST_CASE("8.1 Ada-KV variant A: round half to even gives 2 and 2") {
  CHECK(ada_variant_a(&kAda[0][0], 2, 4, 2, 0.5, false) == std::vector<i64>{2, 2});
  // alpha = 0 is the pure adaptive allocation, alpha = 1 the uniform one.
  CHECK(ada_variant_a(&kAda[0][0], 2, 4, 2, 0.0, false) == std::vector<i64>{1, 3});
  CHECK(ada_variant_a(&kAda[0][0], 2, 4, 2, 1.0, false) == std::vector<i64>{2, 2});
}

TEST_CASE("8.1 Ada-KV variant B: forced floor then global top gives 1 and 3") {
  CHECK(ada_variant_b(&kAda[0][0], 2, 4, 2, 1) == std::vector<i64>{1, 3});
  CHECK(ada_variant_b(&kAda[0][0], 2, 4, 2, 2) == std::vector<i64>{2, 2});  // floor = b: uniform
  CHECK(ada_variant_b(&kAda[0][0], 2, 4, 2, 0) == std::vector<i64>{1, 3});
}

TEST_CASE("8.2 CriticalKV: kept sets and theta 0.800 / 0.771") {
  const float A[4] = {0.6f, 0.2f, 0.1f, 0.1f}, nu[4] = {1, 1, 5, 1};
  const std::uint8_t none[4] = {0, 0, 0, 0};
  auto theta = [&](const std::uint8_t* keep) {
    double c0 = 0, f = 0, g = 0;
    for (int j = 0; j < 4; ++j) {
      c0 += A[j] * nu[j];
      if (keep[j]) f += A[j], g += A[j] * nu[j];
    }
    return c0 - (2 - 1 / f) * g;
  };
  std::uint8_t attn_only[4], two_stage[4];
  critical_select_unit(A, nu, none, 4, 0, 2, 1.0, 0.0, attn_only);  // alpha = 1: base top-k
  CHECK(std::vector<int>(attn_only, attn_only + 4) == std::vector<int>{1, 1, 0, 0});
  CHECK(theta(attn_only) == doctest::Approx(0.800).epsilon(1e-6));
  critical_select_unit(A, nu, none, 4, 0, 2, 0.5, 0.0, two_stage);
  CHECK(std::vector<int>(two_stage, two_stage + 4) == std::vector<int>{1, 0, 1, 0});
  CHECK(theta(two_stage) == doctest::Approx(1.4 - (2 - 1 / 0.7) * 1.1).epsilon(1e-6));
  CHECK(theta(two_stage) == doctest::Approx(0.771).epsilon(1e-3));
  // eps = 1e-4 (the default) does not change this example.
  critical_select_unit(A, nu, none, 4, 0, 2, 0.5, 1e-4, two_stage);
  CHECK(std::vector<int>(two_stage, two_stage + 4) == std::vector<int>{1, 0, 1, 0});
  // alpha = 0: pure product top-2 = {2 (0.5), 0 (0.6)}.
  critical_select_unit(A, nu, none, 4, 0, 2, 0.0, 0.0, two_stage);
  CHECK(std::vector<int>(two_stage, two_stage + 4) == std::vector<int>{1, 0, 1, 0});
  // A protected token counts inside the stage-1 budget (kvpress): floor(0.5*2) - 1 = 0 by
  // attention, the last slot by product among the others (0.6, 0.2, 0.5) -> {0} plus {3}.
  const std::uint8_t last[4] = {0, 0, 0, 1};
  critical_select_unit(A, nu, last, 4, 1, 2, 0.5, 0.0, two_stage);
  CHECK(std::vector<int>(two_stage, two_stage + 4) == std::vector<int>{1, 0, 0, 1});
  // k = 4 with alpha = 0.75: stage 1 = 3 - 1 = 2 by attention {0, 1}, stage 2 {2}.
  critical_select_unit(A, nu, last, 4, 1, 3, 1.0, 0.0, two_stage);
  CHECK(std::vector<int>(two_stage, two_stage + 4) == std::vector<int>{1, 1, 0, 1});
}

TEST_CASE("8.3 PyramidKV integer schedule: 234 - 7l, total 4016 vs 3840") {
  const auto b = pyramid_int_nonwindow(32, 128, 8, 20, 1 << 20);
  REQUIRE(b.size() == 32);
  for (int l = 0; l < 32; ++l) CHECK(b[l] == 234 - 7 * l);
  CHECK(b[31] == 17);
  CHECK(std::accumulate(b.begin(), b.end(), i64{0}) == 4016);
  CHECK(32 * (128 - 8) == 3840);
  // Short prompt: max clamps to n - w and min = 2b - max.
  const auto c = pyramid_int_nonwindow(4, 128, 8, 20, 200);  // b = 120, max = 192, min = 48, step 48
  CHECK(c == std::vector<i64>{192, 144, 96, 48});
  CHECK(pyramid_int_nonwindow(1, 128, 8, 20, 4096) == std::vector<i64>{120});
}

TEST_CASE("8.3 PyramidKV float schedule: 3994 .. 102, average 2048") {
  const auto k = pyramid_float_kept(32, 2048, 64, 20, 4096);
  REQUIRE(k.size() == 32);
  CHECK(k[0] == 3994);
  CHECK(k[31] == 102);
  for (int l = 1; l < 32; ++l) CHECK(k[l] <= k[l - 1]);
  // Every value is round(3993.6 - l * 3891.2 / 31); the average is 2048 up to rounding.
  for (int l = 0; l < 32; ++l) CHECK(k[l] == static_cast<i64>(std::nearbyint(3993.6 - l * 3891.2 / 31)));
  CHECK(std::accumulate(k.begin(), k.end(), 0.0) / 32 == doctest::Approx(2048).epsilon(0.5 / 2048));
  // Fallback to uniform when min < w (tiny budget), and for one layer.
  CHECK(pyramid_float_kept(4, 100, 64, 20, 4096) == std::vector<i64>(4, 100));
  CHECK(pyramid_float_kept(1, 2048, 64, 20, 4096) == std::vector<i64>{2048});
}
