// sum, masked_sum, dot, abs_sum, max_value, axpy, scale: scalar and AVX-512 against a float64
// reference, with error bounds that follow from the summation order of each.
#include "kernel_test_util.h"

// Expected values are computed with the same roundings as the reference: no FMA contraction.
#pragma GCC optimize("fp-contract=off")

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

namespace {

struct Ref {
  double value = 0, abs_terms = 0;  // exact-ish sum and sum of |terms| (for the error bound)
};

// Worst-case recursive-summation bound: n terms in one chain -> (n-1) eps sum|terms|.
// The SIMD kernels run 64 chains of ~n/64 terms then a 64-term combination.
void check_sum(float got, const Ref& ref, i64 chain_len, const char* what) {
  const double bound = (static_cast<double>(chain_len) + 1) * kEps * ref.abs_terms + 1e-30;
  INFO(what << ": got " << got << " expected " << ref.value << " bound " << bound);
  CHECK(std::fabs(static_cast<double>(got) - ref.value) <= bound);
}

i64 simd_chain(i64 n) { return n / 64 + 16 + 64; }

std::vector<std::vector<float>> inputs(i64 n) {
  std::vector<std::vector<float>> v;
  v.push_back(uniform(n, -1.f, 1.f, 1 + n));
  v.push_back(uniform(n, 0.f, 1e4f, 2 + n));
  auto mixed = uniform(n, -80.f, 80.f, 3 + n);  // large magnitude with cancellation
  for (i64 i = 0; i < n; i += 3) mixed[i] *= 1e4f;
  v.push_back(mixed);
  v.push_back(std::vector<float>(static_cast<std::size_t>(n), 0.1f));  // all equal
  return v;
}

}  // namespace

TEST_CASE("sum / abs_sum / masked_sum / dot vs float64, scalar and simd") {
  for (i64 n : kSizes) {
    int which = 0;
    for (const auto& x : inputs(n)) {
      CAPTURE(n);
      CAPTURE(which++);
      const auto y = uniform(n, -2.f, 2.f, 99 + n);
      const auto mask = random_mask(n, 0.5, 7 + n);
      Ref s, a, m, d;
      for (i64 i = 0; i < n; ++i) {
        s.value += x[i];
        s.abs_terms += std::fabs(x[i]);
        a.value += std::fabs(x[i]);
        m.value += mask[i] ? x[i] : 0.0;
        m.abs_terms += mask[i] ? std::fabs(x[i]) : 0.0;
        const double p = static_cast<double>(x[i]) * y[i];
        d.value += p;
        d.abs_terms += std::fabs(p);
      }
      a.abs_terms = a.value;
      check_sum(k::scalar::sum(x.data(), n), s, n, "scalar sum");
      check_sum(k::scalar::abs_sum(x.data(), n), a, n, "scalar abs_sum");
      check_sum(k::scalar::masked_sum(x.data(), mask.data(), n), m, n, "scalar masked_sum");
      check_sum(k::scalar::dot(x.data(), y.data(), n), d, n + 1, "scalar dot");
      if (!have_simd()) continue;
      check_sum(simd::sum(x.data(), n), s, simd_chain(n), "simd sum");
      check_sum(simd::abs_sum(x.data(), n), a, simd_chain(n), "simd abs_sum");
      check_sum(simd::masked_sum(x.data(), mask.data(), n), m, simd_chain(n), "simd masked_sum");
      check_sum(simd::dot(x.data(), y.data(), n), d, simd_chain(n), "simd dot");
    }
  }
}

TEST_CASE("masked_sum ignores masked-out NaN and inf; exact small cases") {
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {1.f, nan, 2.f, inf, 4.f, -inf, 8.f, 16.f, 32.f, 64.f, 128.f, 256.f, 512.f,
                          1024.f, 2048.f, 4096.f, 8192.f};
  std::vector<std::uint8_t> m(x.size(), 1);
  m[1] = m[3] = m[5] = 0;
  // Kept: 1 + 2 + 4 + ... + 8192 = 16383, exact in float whatever the order.
  CHECK(k::scalar::masked_sum(x.data(), m.data(), 17) == 16383.f);
  if (have_simd()) CHECK(simd::masked_sum(x.data(), m.data(), 17) == 16383.f);
  CHECK(k::scalar::sum(x.data(), 1) == 1.f);
  CHECK(k::scalar::dot(x.data(), x.data() + 2, 1) == 2.f);
}

TEST_CASE("max_value: simd bit-identical to scalar, NaN skipped, -inf and ties") {
  const float nan = std::nanf(""), inf = std::numeric_limits<float>::infinity();
  for (i64 n : kSizes) {
    auto x = uniform(n, -1e4f, 1e4f, 5 + n);
    for (i64 i = 0; i < n; i += 7) x[i] = nan;
    for (i64 i = 3; i < n; i += 11) x[i] = -inf;
    float expect = -inf;
    for (i64 i = 0; i < n; ++i)
      if (!std::isnan(x[i]) && x[i] > expect) expect = x[i];
    CAPTURE(n);
    CHECK(same_float(k::scalar::max_value(x.data(), n), expect));
    if (have_simd()) CHECK(same_float(simd::max_value(x.data(), n), expect));
    // Maximum in the last (tail) lane.
    x[n - 1] = 2e4f;
    CHECK(k::scalar::max_value(x.data(), n) == 2e4f);
    if (have_simd()) CHECK(simd::max_value(x.data(), n) == 2e4f);
  }
  std::vector<float> all_nan(17, nan);
  CHECK(k::scalar::max_value(all_nan.data(), 17) == -inf);
  if (have_simd()) CHECK(simd::max_value(all_nan.data(), 17) == -inf);
}

TEST_CASE("axpy and scale: exact per element, simd bit-identical, nothing written past n") {
  for (i64 n : kSizes) {
    const auto x = uniform(n, -3.f, 3.f, 11 + n);
    const auto y0 = uniform(n + 1, -3.f, 3.f, 12 + n);
    auto ys = y0, ya = y0;
    k::scalar::axpy(0.37f, x.data(), ys.data(), n);
    for (i64 i = 0; i < n; ++i) {
      const float p = 0.37f * x[i];
      REQUIRE(bits_of(ys[i]) == bits_of(y0[i] + p));
    }
    auto zs = y0, za = y0;
    k::scalar::scale(zs.data(), n, -1.5f);
    for (i64 i = 0; i < n; ++i) REQUIRE(zs[i] == y0[i] * -1.5f);
    if (!have_simd()) continue;
    simd::axpy(0.37f, x.data(), ya.data(), n);
    simd::scale(za.data(), n, -1.5f);
    for (i64 i = 0; i <= n; ++i) {
      REQUIRE(bits_of(ya[i]) == bits_of(ys[i]));
      REQUIRE(bits_of(za[i]) == bits_of(zs[i]));
    }
  }
}
