// masked_weighted_rowsum (bit-exact), row_abs_sums and row_quadratic_forms (float64 bounds).
#include "kernel_test_util.h"

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

TEST_CASE("masked_weighted_rowsum: simd bit-identical to scalar; scalar vs float64") {
  for (i64 d : {1, 8, 15, 16, 17, 64, 96, 128, 200, 256}) {
    for (i64 n : {1, 17, 1000}) {
      CAPTURE(d);
      CAPTURE(n);
      const i64 ld = d + 5;  // rows are strided, not packed
      const auto rows = uniform(n * ld, -3.f, 3.f, 100 + d * n);
      const auto w = uniform(n, 0.f, 1.f, 200 + n);
      const auto mask = random_mask(n, 0.3, 300 + n);
      const auto out0 = uniform(d + 1, -1.f, 1.f, 400 + d);
      auto s = out0;
      k::scalar::masked_weighted_rowsum(w.data(), mask.data(), rows.data(), n, d, ld, s.data());
      for (i64 c = 0; c < d; ++c) {
        double exact = out0[c], mag = std::fabs(out0[c]);
        for (i64 j = 0; j < n; ++j)
          if (mask[j]) {
            exact += static_cast<double>(w[j]) * rows[j * ld + c];
            mag += std::fabs(static_cast<double>(w[j]) * rows[j * ld + c]);
          }
        REQUIRE(std::fabs(s[c] - exact) <= (n + 2) * kEps * mag);
      }
      CHECK(s[d] == out0[d]);
      if (!have_simd()) continue;
      auto a = out0;
      simd::masked_weighted_rowsum(w.data(), mask.data(), rows.data(), n, d, ld, a.data());
      for (i64 c = 0; c <= d; ++c) REQUIRE(bits_of(a[c]) == bits_of(s[c]));
    }
  }
}

TEST_CASE("masked_weighted_rowsum: empty kept set leaves out unchanged") {
  std::vector<float> rows(64, 1.f), w(8, 1.f), out(8, 0.5f);
  std::vector<std::uint8_t> none(8, 0);
  k::masked_weighted_rowsum(w.data(), none.data(), rows.data(), 8, 8, 8, out.data());
  CHECK(out == std::vector<float>(8, 0.5f));
}

TEST_CASE("row_abs_sums vs float64, simd within its reassociation bound") {
  for (i64 cols : {1, 8, 17, 64, 96, 128, 4099}) {
    const i64 rows = 9, ld = cols + 3;
    const auto m = uniform(rows * ld, -50.f, 50.f, 500 + cols);
    std::vector<float> s(rows + 1, -1.f), a(rows + 1, -1.f);
    k::scalar::row_abs_sums(m.data(), rows, cols, ld, s.data());
    if (have_simd()) simd::row_abs_sums(m.data(), rows, cols, ld, a.data());
    for (i64 i = 0; i < rows; ++i) {
      double exact = 0;
      for (i64 c = 0; c < cols; ++c) exact += std::fabs(m[i * ld + c]);
      CAPTURE(cols);
      REQUIRE(std::fabs(s[i] - exact) <= cols * kEps * exact);
      if (k::cpu_isas().supports(kSimdIsa)) REQUIRE(std::fabs(a[i] - exact) <= (cols / 64.0 + 80) * kEps * exact);
    }
    CHECK(s[rows] == -1.f);
  }
}

TEST_CASE("row_quadratic_forms vs float64 (G symmetric PSD and general)") {
  for (i64 d : {1, 8, 17, 64, 96, 128, 300}) {
    const i64 rows = 5;
    const auto x = uniform(rows * d, -2.f, 2.f, 600 + d);
    auto G = uniform(d * d, -1.f, 1.f, 700 + d);
    for (i64 a = 0; a < d; ++a) G[a * d + a] += 3.f;
    std::vector<float> s(rows), v(rows);
    k::scalar::row_quadratic_forms(x.data(), rows, d, G.data(), s.data());
    if (have_simd()) simd::row_quadratic_forms(x.data(), rows, d, G.data(), v.data());
    for (i64 i = 0; i < rows; ++i) {
      double exact = 0, mag = 0;
      for (i64 a = 0; a < d; ++a)
        for (i64 b = 0; b < d; ++b) {
          const double t = static_cast<double>(x[i * d + a]) * G[a * d + b] * x[i * d + b];
          exact += t;
          mag += std::fabs(t);
        }
      CAPTURE(d);
      REQUIRE(std::fabs(s[i] - exact) <= (2 * d + 4) * kEps * mag);
      if (k::cpu_isas().supports(kSimdIsa)) REQUIRE(std::fabs(v[i] - exact) <= (d + 80) * kEps * mag);
    }
  }
}
