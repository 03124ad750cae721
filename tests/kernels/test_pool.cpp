// avg_pool1d, max_pool1d and group_reduce: hand-computed cases, float64 references, and
// AVX-512 bit-identical to scalar (same order of operations).
#include "kernel_test_util.h"

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

TEST_CASE("pooling hand-computed: zero padding divides by k, max pads with -inf") {
  const std::vector<float> x = {1.f, 2.f, 3.f, 4.f, 5.f};
  std::vector<float> avg(5), mx(5);
  k::avg_pool1d(x.data(), 5, 3, avg.data());
  k::max_pool1d(x.data(), 5, 3, mx.data());
  CHECK(avg == std::vector<float>{1.f, 2.f, 3.f, 4.f, 3.f});  // (0+1+2)/3 = 1, (4+5+0)/3 = 3
  CHECK(mx == std::vector<float>{2.f, 3.f, 4.f, 5.f, 5.f});
  std::vector<float> neg = {-1.f, -2.f, -3.f}, m3(3);
  k::max_pool1d(neg.data(), 3, 7, m3.data());  // window wider than n: never the padding value
  CHECK(m3 == std::vector<float>{-1.f, -1.f, -1.f});
}

TEST_CASE("avg/max pooling: scalar vs float64, simd bit-identical, NaN handling") {
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  for (i64 n : kSizes) {
    for (int kk : {1, 3, 5, 7, 9, 31, 33}) {
      auto x = uniform(n + 1, -100.f, 100.f, 800 + n * kk);
      if (n > 20) {
        x[5] = -inf;
        x[n / 2] = nan;
      }
      x[n] = 1e30f;  // past the end: must not be read into any window
      std::vector<float> sa(n + 1, 7.f), sm(n + 1, 7.f);
      k::scalar::avg_pool1d(x.data(), n, kk, sa.data());
      k::scalar::max_pool1d(x.data(), n, kk, sm.data());
      const i64 r = kk / 2;
      for (i64 j = 0; j < n; ++j) {
        double s = 0, mag = 0;
        float m = -inf;
        bool has_nan = false;
        for (i64 i = std::max<i64>(0, j - r); i <= std::min(n - 1, j + r); ++i) {
          s += x[i];
          mag += std::fabs(x[i]);
          has_nan |= std::isnan(x[i]);
          if (x[i] > m) m = x[i];
        }
        CAPTURE(n);
        CAPTURE(kk);
        CAPTURE(j);
        REQUIRE(same_float(sm[j], m));  // NaN never wins a max
        if (has_nan) REQUIRE(std::isnan(sa[j]));
        else if (std::isinf(s)) REQUIRE(sa[j] == static_cast<float>(s / kk));
        else REQUIRE(std::fabs(sa[j] - s / kk) <= (kk + 1) * kEps * (mag / kk) + 1e-30);
      }
      CHECK(sa[n] == 7.f);
      CHECK(sm[n] == 7.f);
      if (!have_simd()) continue;
      std::vector<float> aa(n + 1, 7.f), am(n + 1, 7.f);
      simd::avg_pool1d(x.data(), n, kk, aa.data());
      simd::max_pool1d(x.data(), n, kk, am.data());
      for (i64 j = 0; j <= n; ++j) {
        REQUIRE(same_float(aa[j], sa[j]));
        REQUIRE(same_float(am[j], sm[j]));
      }
    }
  }
}

TEST_CASE("group_reduce mean/max/sum: hand case, float64, simd bit-identical") {
  // Two rows of 3 with a row stride of 4.
  const std::vector<float> two = {1.f, -2.f, 5.f, 99.f, 3.f, -1.f, 5.f, 99.f};
  std::vector<float> out(3);
  k::group_reduce(two.data(), 2, 3, 4, k::GroupOp::mean, out.data());
  CHECK(out == std::vector<float>{2.f, -1.5f, 5.f});
  k::group_reduce(two.data(), 2, 3, 4, k::GroupOp::max, out.data());
  CHECK(out == std::vector<float>{3.f, -1.f, 5.f});
  k::group_reduce(two.data(), 2, 3, 4, k::GroupOp::sum, out.data());
  CHECK(out == std::vector<float>{4.f, -3.f, 10.f});

  const float nan = std::nanf("");
  for (int g : {1, 2, 3, 4, 8}) {
    for (i64 n : kSizes) {
      const i64 ld = n + 9;
      auto x = uniform(g * ld, -10.f, 10.f, 900 + g * n);
      if (g > 1 && n > 3) x[ld + 2] = nan;  // NaN outside the first row: skipped by max
      for (auto op : {k::GroupOp::mean, k::GroupOp::max, k::GroupOp::sum}) {
        std::vector<float> s(n + 1, 7.f), a(n + 1, 7.f);
        k::scalar::group_reduce(x.data(), g, n, ld, op, s.data());
        for (i64 j = 0; j < n; ++j) {
          double acc = x[j], mag = std::fabs(x[j]);
          float mx = x[j];
          bool has_nan = std::isnan(x[j]);
          for (int r = 1; r < g; ++r) {
            const float v = x[r * ld + j];
            acc += v;
            mag += std::fabs(v);
            has_nan |= std::isnan(v);
            if (v > mx) mx = v;
          }
          CAPTURE(g);
          CAPTURE(n);
          CAPTURE(j);
          if (op == k::GroupOp::max) REQUIRE(same_float(s[j], mx));
          else if (has_nan) REQUIRE(std::isnan(s[j]));
          else if (op == k::GroupOp::sum) REQUIRE(std::fabs(s[j] - acc) <= g * kEps * mag);
          else REQUIRE(std::fabs(s[j] - acc / g) <= (g + 1) * kEps * mag / g);
        }
        CHECK(s[n] == 7.f);
        if (!have_simd()) continue;
        simd::group_reduce(x.data(), g, n, ld, op, a.data());
        for (i64 j = 0; j <= n; ++j) REQUIRE(same_float(a[j], s[j]));
      }
    }
  }
}
