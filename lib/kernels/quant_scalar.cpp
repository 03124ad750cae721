// Scalar reference of the KV quantization kernels (kernels.h, rules doc 2.33): plain float64
// arithmetic in the order the numpy reference (tests/python/test_quant.py) uses.
#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace kvsim::kernels::scalar {

void group_min_max(const float* x, i64 groups, i64 g, float* mn, float* mx) {
  for (i64 i = 0; i < groups; ++i) {
    const float* p = x + i * g;
    float lo = p[0], hi = p[0];
    for (i64 j = 1; j < g; ++j) {
      lo = std::min(lo, p[j]);
      hi = std::max(hi, p[j]);
    }
    mn[i] = lo + 0.0f;  // -0 -> +0: which zero min() returns depends on the order of the values
    mx[i] = hi + 0.0f;
  }
}

void quant_affine(const float* x, i64 groups, i64 g, const double* scale, const double* zero, int lo, int hi,
                  std::int16_t* codes, float* xhat) {
  for (i64 i = 0; i < groups; ++i)
    for (i64 j = i * g; j < (i + 1) * g; ++j) {
      const double q = std::clamp(std::nearbyint((static_cast<double>(x[j]) - zero[i]) / scale[i]),
                                  static_cast<double>(lo), static_cast<double>(hi));
      codes[j] = static_cast<std::int16_t>(q);
      xhat[j] = static_cast<float>(q * scale[i] + zero[i]);
    }
}

void quant_minifloat(const float* x, i64 n, int mant, int min_exp, double max, float* xhat) {
  for (i64 j = 0; j < n; ++j) {
    const double v = x[j];
    int e = 0;
    std::frexp(v, &e);  // v = f 2^e, f in [0.5, 1): the leading bit is 2^(e-1)
    const double step = std::ldexp(1.0, std::max(e - 1, min_exp) - mant);
    const double r = std::nearbyint(v / step) * step;
    xhat[j] = static_cast<float>(std::clamp(r, -max, max));
  }
}

}  // namespace kvsim::kernels::scalar
