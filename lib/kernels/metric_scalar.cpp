// Scalar references of the perturbation-metric kernels (split masses, compaction, panel
// projection): the definition the AVX-512 versions are tested against.
#include <cmath>

#include "kernels/kernels.h"

// Same reason as kernels_scalar.cpp: the reference must not pick up FMA contraction.
#pragma GCC optimize("fp-contract=off")

namespace kvsim::kernels::scalar {

void split_mass_sums(const float* a, const float* nu, const std::uint8_t* mask, i64 n, float out[4]) {
  float k = 0.f, e = 0.f, knu = 0.f, enu = 0.f;
  for (i64 j = 0; j < n; ++j) {
    const float w = a[j] * nu[j];
    if (mask[j]) {
      k += a[j];
      knu += w;
    } else {
      e += a[j];
      enu += w;
    }
  }
  out[0] = k;
  out[1] = e;
  out[2] = knu;
  out[3] = enu;
}

i64 compress_masked(const float* x, const std::uint8_t* mask, i64 n, float* out) {
  i64 m = 0;
  for (i64 j = 0; j < n; ++j)
    if (mask[j]) out[m++] = x[j];
  return m;
}

void project_panel(const float* x, i64 n, i64 d, const float* panel, float* l1, float* sq, float* y) {
  for (i64 i = 0; i < n; ++i) {
    float s1 = 0.f, s2 = 0.f;
    for (i64 e = 0; e < kPanel; ++e) {
      float p = 0.f;
      for (i64 c = 0; c < d; ++c) p += x[i * d + c] * panel[c * kPanel + e];
      s1 += std::fabs(p);
      s2 += p * p;
      if (y) y[i * kPanel + e] += p;
    }
    l1[i] += s1;
    if (sq) sq[i] += s2;
  }
}

}  // namespace kvsim::kernels::scalar
