// widen_f16 / widen_bf16 (exhaustive over all 65536 bit patterns) and count_nonfinite.
#include "kernel_test_util.h"

namespace k = kvsim::kernels;
using namespace kvsim::ktest;

namespace {

std::vector<std::uint16_t> all_patterns() {
  std::vector<std::uint16_t> v(65536);
  for (std::uint32_t i = 0; i < 65536; ++i) v[i] = static_cast<std::uint16_t>(i);
  return v;
}

// binary16 value by definition, in double: (-1)^s * 2^(e-15) * 1.m, subnormal 2^-14 * 0.m.
double f16_value(std::uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double mag = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return s ? -mag : mag;
}

}  // namespace

TEST_CASE("widen_f16 scalar: every finite pattern has its exact value; inf and NaN classes kept") {
  const auto in = all_patterns();
  std::vector<float> out(in.size());
  k::scalar::widen_f16(in.data(), out.data(), static_cast<kvsim::i64>(in.size()));
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 31 && m == 0) {
      REQUIRE(std::isinf(out[h]));
      REQUIRE(std::signbit(out[h]) == bool(h & 0x8000));
    } else if (e == 31) {
      REQUIRE(std::isnan(out[h]));
    } else {
      REQUIRE(static_cast<double>(out[h]) == f16_value(static_cast<std::uint16_t>(h)));
      REQUIRE(std::signbit(out[h]) == bool(h & 0x8000));  // -0 stays -0
    }
  }
}

TEST_CASE("widen_f16 known values") {
  const std::vector<std::uint16_t> in = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x8000, 0x7c00, 0x0400, 0x3555};
  std::vector<float> out(in.size());
  k::widen_f16(in.data(), out.data(), static_cast<kvsim::i64>(in.size()));
  CHECK(out[0] == 1.0f);
  CHECK(out[1] == -2.0f);
  CHECK(out[2] == 65504.0f);
  CHECK(out[3] == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(bits_of(out[4]) == 0x80000000u);
  CHECK(out[5] == std::numeric_limits<float>::infinity());
  CHECK(out[6] == std::ldexp(1.0f, -14));  // smallest normal
  CHECK(out[7] == 0.333251953125f);
}

TEST_CASE("widen_f16 simd == scalar, exhaustive, every length/offset of the tail") {
  if (!have_simd()) return;
  const auto in = all_patterns();
  std::vector<float> a(in.size()), s(in.size());
  k::scalar::widen_f16(in.data(), s.data(), 65536);
  simd::widen_f16(in.data(), a.data(), 65536);
  for (std::size_t i = 0; i < in.size(); ++i) {
    INFO("pattern " << i);
    REQUIRE(same_float(a[i], s[i]));
  }
  // Tails: odd lengths and offsets must neither miss nor overwrite elements.
  for (kvsim::i64 n : kSizes) {
    std::vector<float> out(static_cast<std::size_t>(n) + 1, 7.f);
    simd::widen_f16(in.data() + 15360 + 3, out.data(), n);
    for (kvsim::i64 i = 0; i < n; ++i) REQUIRE(same_float(out[i], s[15360 + 3 + i]));
    CHECK(out[n] == 7.f);
  }
}

TEST_CASE("widen_bf16 exhaustive: upper half of the float bits, simd identical") {
  const auto in = all_patterns();
  std::vector<float> s(in.size()), a(in.size());
  k::scalar::widen_bf16(in.data(), s.data(), 65536);
  for (std::uint32_t h = 0; h < 65536; ++h) REQUIRE(bits_of(s[h]) == h << 16);
  CHECK(s[0x3f80] == 1.0f);
  CHECK(s[0xc000] == -2.0f);
  if (!have_simd()) return;
  simd::widen_bf16(in.data(), a.data(), 65536);
  for (std::uint32_t h = 0; h < 65536; ++h) REQUIRE(bits_of(a[h]) == h << 16);
  for (kvsim::i64 n : kSizes) {
    std::vector<float> out(static_cast<std::size_t>(n) + 1, 7.f);
    simd::widen_bf16(in.data() + 5, out.data(), n);
    for (kvsim::i64 i = 0; i < n; ++i) REQUIRE(bits_of(out[i]) == bits_of(s[5 + i]));
    CHECK(out[n] == 7.f);
  }
}

TEST_CASE("count_nonfinite: scalar vs direct count, simd identical") {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  for (kvsim::i64 n : kSizes) {
    auto x = uniform(n + 1, -1e30f, 1e30f, 40 + n);
    std::mt19937_64 rng(n);
    kvsim::i64 expect = 0;
    for (kvsim::i64 i = 0; i < n; ++i) {
      const int r = static_cast<int>(rng() % 8);
      if (r == 0) x[i] = nan;
      if (r == 1) x[i] = -inf;
      if (r == 2) x[i] = inf;
      if (r == 3) x[i] = std::numeric_limits<float>::max();
      if (r == 4) x[i] = std::numeric_limits<float>::denorm_min();
      expect += r <= 2;
    }
    x[n] = nan;  // past the end: must not be counted
    CHECK(k::scalar::count_nonfinite(x.data(), n) == expect);
    if (have_simd()) CHECK(simd::count_nonfinite(x.data(), n) == expect);
  }
}
