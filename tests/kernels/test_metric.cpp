// split_mass_sums, compress_masked, pack_panels + project_panel: scalar and AVX-512 against a
// float64 reference (error bounds from the summation order), compaction bit-exact.
#include "kernel_test_util.h"

#pragma GCC optimize("fp-contract=off")

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

namespace {

// |got - want| within (chain + 1) eps sum|terms| (see test_reduce.cpp for the chain lengths).
void near(double got, double want, double abs_terms, i64 chain, const char* what) {
  const double bound = (static_cast<double>(chain) + 2) * kEps * abs_terms + 1e-30;
  INFO(what << ": got " << got << " want " << want << " bound " << bound);
  CHECK(std::fabs(got - want) <= bound);
}

}  // namespace

TEST_CASE("split_mass_sums: scalar and simd vs float64, every tail length") {
  for (i64 n : kSizes) {
    for (double p : {0.0, 0.3, 1.0}) {
      CAPTURE(n);
      CAPTURE(p);
      auto a = uniform(n, 0.f, 1.f, 11 + n);
      a[0] = 30.f;  // a large term next to small ones
      const auto nu = uniform(n, 0.f, 50.f, 12 + n);
      const auto mask = random_mask(n, p, 13 + n);
      double want[4] = {0, 0, 0, 0}, terms[4] = {0, 0, 0, 0};
      for (i64 j = 0; j < n; ++j) {
        const double w = static_cast<double>(a[j]) * nu[j];
        const int side = mask[j] ? 0 : 1;
        want[side] += a[j];
        want[side + 2] += w;
        terms[side] += a[j];
        terms[side + 2] += w;
      }
      float s[4], v[4];
      k::scalar::split_mass_sums(a.data(), nu.data(), mask.data(), n, s);
      for (int i = 0; i < 4; ++i) near(s[i], want[i], terms[i], n, "scalar");
      if (have_simd()) {
        simd::split_mass_sums(a.data(), nu.data(), mask.data(), n, v);
        for (int i = 0; i < 4; ++i) near(v[i], want[i], terms[i], n / 32 + 64, "simd");
      }
    }
  }
}

TEST_CASE("compress_masked: bit-exact, never writes past the count") {
  for (i64 n : kSizes) {
    for (double p : {0.0, 0.05, 0.5, 1.0}) {
      CAPTURE(n);
      CAPTURE(p);
      auto x = uniform(n, -1.f, 1.f, 21 + n);
      if (n > 3) x[3] = std::numeric_limits<float>::quiet_NaN();  // copied, not computed with
      const auto mask = random_mask(n, p, 22 + n);
      i64 want = 0;
      for (auto b : mask) want += b != 0;
      const float guard = -7.25f;
      std::vector<float> s(n + 32, guard), v(n + 32, guard);
      CHECK(k::scalar::compress_masked(x.data(), mask.data(), n, s.data()) == want);
      for (i64 j = 0, m = 0; j < n; ++j)
        if (mask[j]) CHECK(same_float(s[m++], x[j]));
      if (!have_simd()) continue;
      CHECK(simd::compress_masked(x.data(), mask.data(), n, v.data()) == want);
      for (i64 i = 0; i < n + 32; ++i) CHECK(same_float(v[i], s[i]));  // incl. the untouched guard
    }
  }
}

TEST_CASE("pack_panels lays out W column panels, zero padded; identity without W") {
  const i64 d = 3, D = 70, ld = 5;  // two panels, the second mostly padding
  std::vector<float> Wt(D * ld);
  for (i64 e = 0; e < D; ++e)
    for (i64 c = 0; c < ld; ++c) Wt[e * ld + c] = static_cast<float>(100 * e + c);
  std::vector<float> P(k::panel_count(D) * d * k::kPanel, -1.f);
  REQUIRE(k::panel_count(D) == 2);
  k::pack_panels(Wt.data(), ld, d, D, P.data());
  for (i64 p = 0; p < 2; ++p)
    for (i64 c = 0; c < d; ++c)
      for (i64 e = 0; e < k::kPanel; ++e) {
        const i64 col = p * k::kPanel + e;
        CHECK(P[(p * d + c) * k::kPanel + e] == (col < D ? static_cast<float>(100 * col + c) : 0.f));
      }
  std::vector<float> I(k::panel_count(4) * 4 * k::kPanel);
  k::pack_panels(nullptr, 0, 4, 4, I.data());
  for (i64 c = 0; c < 4; ++c)
    for (i64 e = 0; e < k::kPanel; ++e) CHECK(I[c * k::kPanel + e] == (c == e ? 1.f : 0.f));
}

TEST_CASE("project_panel: l1, sq and y of x W vs float64, scalar and simd, all row tails") {
  for (i64 d : {1, 8, 128}) {
    const i64 D = 150;  // 3 panels, the last padded
    const auto Wt = uniform(D * d, -1.f, 1.f, 31 + d);
    std::vector<float> P(k::panel_count(D) * d * k::kPanel);
    k::pack_panels(Wt.data(), d, d, D, P.data());
    for (i64 n : {1, 5, 6, 7, 13, 64}) {
      CAPTURE(d);
      CAPTURE(n);
      auto x = uniform(n * d, -3.f, 3.f, 32 + n + d);
      // float64 reference of p = x W, its norms and the layer-style accumulation into y.
      std::vector<double> l1(n, 0), sq(n, 0), l1t(n, 0), sqt(n, 0);
      for (i64 i = 0; i < n; ++i)
        for (i64 e = 0; e < D; ++e) {
          double p = 0, pt = 0;
          for (i64 c = 0; c < d; ++c) {
            p += static_cast<double>(x[i * d + c]) * Wt[e * d + c];
            pt += std::fabs(static_cast<double>(x[i * d + c]) * Wt[e * d + c]);
          }
          l1[i] += std::fabs(p);
          l1t[i] += pt;
          sq[i] += p * p;
          sqt[i] += pt * pt;
        }
      for (int isa = 0; isa < 2; ++isa) {
        if (isa == 1 && !have_simd()) break;
        auto run = isa == 0 ? &k::scalar::project_panel : &simd::project_panel;
        std::vector<float> g1(n, 0.f), g2(n, 0.f), y(n * k::kPanel * k::panel_count(D), 0.5f);
        for (i64 p = 0; p < k::panel_count(D); ++p) {
          std::vector<float> yp(n * k::kPanel, 0.5f);
          run(x.data(), n, d, P.data() + p * d * k::kPanel, g1.data(), g2.data(), yp.data());
          for (i64 i = 0; i < n; ++i)
            for (i64 e = 0; e < k::kPanel; ++e) {
              const i64 col = p * k::kPanel + e;
              if (col >= D) {
                CHECK(yp[i * k::kPanel + e] == 0.5f);  // padding columns add exactly 0
                continue;
              }
              double want = 0, terms = 0;
              for (i64 c = 0; c < d; ++c) {
                want += static_cast<double>(x[i * d + c]) * Wt[col * d + c];
                terms += std::fabs(static_cast<double>(x[i * d + c]) * Wt[col * d + c]);
              }
              near(yp[i * k::kPanel + e] - 0.5, want, terms + 1.0, d + 2, "y");
            }
        }
        for (i64 i = 0; i < n; ++i) {
          // Each |p_e| carries the dot product's error (d eps terms); then the sums over D.
          near(g1[i], l1[i], l1t[i], d + D, "l1");
          near(g2[i], sq[i], 2 * sqt[i], d + D, "sq");
        }
        std::vector<float> h1(n, 0.f);  // sq and y are optional
        run(x.data(), n, d, P.data(), h1.data(), nullptr, nullptr);
        for (i64 i = 0; i < n; ++i) CHECK(std::isfinite(h1[i]));
      }
    }
  }
}

TEST_CASE("project_panel propagates NaN rows") {
  const i64 d = 8;
  std::vector<float> P(d * k::kPanel, 1.f), x(2 * d, 1.f);
  x[d + 2] = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> l1(2, 0.f);
  k::project_panel(x.data(), 2, d, P.data(), l1.data(), nullptr, nullptr);
  CHECK(l1[0] == doctest::Approx(8.f * 64));
  CHECK(std::isnan(l1[1]));
}
