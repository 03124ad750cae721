// softmax_inplace / scaled_softmax_inplace: the vector exp against float64 exp (via a two-entry
// softmax, which returns exp(z) itself when 1 + exp(z) rounds to 1), and whole softmaxes on
// random and adversarial logits against a float64 softmax of the same float arguments.
#include "kernel_test_util.h"

// Expected values are computed with the same roundings as the reference: no FMA contraction.
#pragma GCC optimize("fp-contract=off")

namespace k = kvsim::kernels;
using namespace kvsim::ktest;
using kvsim::i64;

namespace {

using SoftmaxFn = float (*)(float*, i64, float);

struct Impl {
  std::string name;
  SoftmaxFn fn;
};

std::vector<Impl> impls() {
  std::vector<Impl> v = {{"scalar", k::scalar::scaled_softmax_inplace}};
  if (k::cpu_isas().supports(kSimdIsa)) v.push_back({"simd", simd::scaled_softmax_inplace});
  else MESSAGE("CPU/OS without AVX-512: AVX-512 softmax not tested");
  return v;
}

// Float64 softmax of the float arguments z_i = fl(fl(x_i * scale) - m) that every kernel
// evaluates (so the check measures exp, sum and normalisation, not the argument rounding).
std::vector<double> reference(const std::vector<float>& x, float scale, double* lse) {
  float m = -std::numeric_limits<float>::infinity();
  for (float v : x) m = std::max(m, v * scale);
  std::vector<double> p(x.size());
  double s = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float z = x[i] * scale - m;
    p[i] = std::exp(static_cast<double>(z));
    s += p[i];
  }
  for (auto& v : p) v /= s;
  *lse = m + std::log(s);
  return p;
}

void check_softmax(const Impl& impl, std::vector<float> x, float scale) {
  double lse_ref;
  const auto ref = reference(x, scale, &lse_ref);
  const i64 n = static_cast<i64>(x.size());
  const float lse = impl.fn(x.data(), n, scale);
  // exp within 2 ulp, the float32 sum within (chain length) eps, then one multiply.
  const double chain = impl.name == "scalar" ? static_cast<double>(n) : n / 32.0 + 8;
  const double rel = 4 * kEps + chain * kEps;
  double total = 0;
  for (i64 i = 0; i < n; ++i) {
    INFO(impl.name << " n=" << n << " scale=" << scale << " i=" << i << " got " << x[i] << " want " << ref[i]);
    REQUIRE(std::fabs(x[i] - ref[i]) <= rel * ref[i] + 3e-45);  // + 2 subnormal units
    total += x[i];
  }
  CHECK(std::fabs(total - 1.0) <= rel + n * kEps);
  CHECK(std::fabs(lse - lse_ref) <= 2 * kEps * std::max(1.0, std::fabs(lse_ref)) + chain * kEps);
}

}  // namespace

TEST_CASE("exp via two-entry softmax: within 1 ulp of float64 exp down to underflow, then 0") {
  for (const auto& impl : impls()) {
    i64 worst = 0;
    for (double zd = -17.0; zd >= -120.0; zd -= 0.0137) {
      const float z = static_cast<float>(zd);
      std::vector<float> x = {0.f, z};
      impl.fn(x.data(), 2, 1.f);
      const double want = std::exp(static_cast<double>(z));  // 1 + exp(z) == 1 in float here
      CHECK(x[0] == 1.f);
      if (want < std::ldexp(1.0, -126)) {  // subnormal or zero: absolute error in 2^-149 units
        const double err = std::fabs(x[1] - want) / std::ldexp(1.0, -149);
        INFO(impl.name << " z=" << z << " got " << x[1] << " want " << want);
        REQUIRE(err <= 1.0);
        if (z < -104.f) REQUIRE(x[1] == 0.f);
      } else {
        const i64 u = ulp_distance(x[1], static_cast<float>(want));
        worst = std::max(worst, u);
        INFO(impl.name << " z=" << z);
        REQUIRE(u <= 1);
      }
    }
    MESSAGE(impl.name << ": worst exp error " << worst << " ulp vs correctly rounded");
  }
}

TEST_CASE("softmax on random logits, all sizes, several scales") {
  for (const auto& impl : impls())
    for (i64 n : kSizes)
      for (float scale : {1.f, 0.125f, -0.35355339f}) check_softmax(impl, uniform(n, -8.f, 8.f, 21 + n), scale);
}

TEST_CASE("softmax adversarial: huge logits, -inf entries, all equal, one dominant, n = 1") {
  const float inf = std::numeric_limits<float>::infinity();
  for (const auto& impl : impls()) {
    for (i64 n : kSizes) {
      CAPTURE(n);
      check_softmax(impl, uniform(n, -80.f, 80.f, 31 + n), 1.f);
      check_softmax(impl, uniform(n, -1e4f, 1e4f, 32 + n), 1.f);
      check_softmax(impl, std::vector<float>(static_cast<std::size_t>(n), 3.5f), 1.f);
      auto with_inf = uniform(n, -5.f, 5.f, 33 + n);
      for (i64 i = 0; i + 1 < n; i += 2) with_inf[i] = -inf;
      check_softmax(impl, with_inf, 1.f);
      {
        auto x = with_inf;
        impl.fn(x.data(), n, 1.f);
        for (i64 i = 0; i + 1 < n; i += 2) REQUIRE(x[i] == 0.f);  // exactly zero weight
      }
      // Around the subnormal range: exp of -104 and below rounds to 0 (the SIMD exp zeroes those
      // lanes without an underflowing scale), above it the results are subnormal.
      auto subnormal = uniform(n, -112.f, -86.f, 35 + n);
      subnormal[n / 2] = 0.f;
      check_softmax(impl, subnormal, 1.f);
      auto dominant = uniform(n, -300.f, -110.f, 34 + n);  // exp underflows to exactly 0
      dominant[n / 2] = 0.f;
      auto x = dominant;
      impl.fn(x.data(), n, 1.f);
      CHECK(x[n / 2] == 1.f);
      for (i64 i = 0; i < n; ++i)
        if (i != n / 2) REQUIRE(x[i] == 0.f);
    }
    std::vector<float> one = {-123.f};
    const float lse = impl.fn(one.data(), 1, 1.f);
    CHECK(one[0] == 1.f);
    CHECK(lse == -123.f);
    std::vector<float> all_equal(4099, 2.f);
    const float lse2 = impl.fn(all_equal.data(), 4099, 1.f);
    for (float v : all_equal) REQUIRE(std::fabs(v - 1.0 / 4099) <= 8 * kEps / 4099);
    CHECK(std::fabs(lse2 - (2.0 + std::log(4099.0))) <= 1e-5);
  }
}

TEST_CASE("softmax undefined inputs: all -inf or any NaN gives NaN everywhere") {
  const float inf = std::numeric_limits<float>::infinity();
  for (const auto& impl : impls()) {
    for (i64 n : {1, 17, 40}) {
      std::vector<float> all_ninf(static_cast<std::size_t>(n), -inf);
      CHECK(std::isnan(impl.fn(all_ninf.data(), n, 1.f)));
      for (float v : all_ninf) REQUIRE(std::isnan(v));
      auto with_nan = uniform(n, -1.f, 1.f, 5);
      with_nan[n - 1] = std::nanf("");
      CHECK(std::isnan(impl.fn(with_nan.data(), n, 1.f)));
      for (float v : with_nan) REQUIRE(std::isnan(v));
    }
  }
}

TEST_CASE("softmax_inplace == scaled_softmax_inplace(scale 1); dispatch follows the ISA switch") {
  auto x = uniform(1000, -10.f, 10.f, 77);
  auto a = x, b = x;
  k::scalar::softmax_inplace(a.data(), 1000);
  k::scalar::scaled_softmax_inplace(b.data(), 1000, 1.f);
  CHECK(a == b);
  if (!have_simd()) return;
  auto c = x, d = x;
  simd::softmax_inplace(c.data(), 1000);
  const k::Isa restore = k::active_isa();
  k::set_isa_for_testing(kSimdIsa);
  k::softmax_inplace(d.data(), 1000);
  k::set_isa_for_testing(restore);
  CHECK(c == d);
}

TEST_CASE("logit soft-capping: c tanh(x / c) against float64; -inf stays masked; no cap = scaled softmax") {
  auto x = uniform(513, -40.f, 40.f, 5);
  x[7] = -INFINITY;
  for (float c : {0.5f, 2.f, 50.f}) {
    auto y = x;
    k::softcap_inplace(y.data(), 513, c);
    for (std::size_t j = 0; j < x.size(); ++j) {
      if (j == 7) {
        CHECK(y[j] == -INFINITY);
        continue;
      }
      const double want = c * std::tanh(static_cast<double>(x[j]) / c);
      CHECK(std::fabs(y[j] - want) <= 4e-7 * c);
      CHECK(std::fabs(y[j]) <= c);
    }
    // softmax(cap(scale * x)) equals the float64 formula.
    auto z = x;
    k::logit_softmax_inplace(z.data(), 513, {0.25f, c});
    std::vector<double> ref(513);
    double mx = -1e300, sum = 0;
    for (std::size_t j = 0; j < x.size(); ++j) {
      ref[j] = j == 7 ? -INFINITY : c * std::tanh(0.25 * x[j] / c);
      mx = std::max(mx, ref[j]);
    }
    for (auto& r : ref) sum += (r = std::exp(r - mx));
    for (std::size_t j = 0; j < x.size(); ++j) CHECK(z[j] == doctest::Approx(ref[j] / sum).epsilon(1e-5));
    CHECK(z[7] == 0.f);
  }
  auto a = x, b = x;
  k::logit_softmax_inplace(a.data(), 513, {0.3f, 0.f});
  k::scaled_softmax_inplace(b.data(), 513, 0.3f);
  CHECK(a == b);  // bit-identical without a cap
}
