// Scalar reference kernels: the definition of what every SIMD kernel must compute.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/kernels.h"

// The reference must not depend on the build flags: GCC contracts a * b + c into an FMA in C++
// whenever the target has one (-march=native), which would change its results.
#pragma GCC optimize("fp-contract=off")

namespace kvsim::kernels::scalar {

void widen_f16(const std::uint16_t* in, float* out, i64 n) {
  for (i64 i = 0; i < n; ++i) {
    const std::uint32_t h = in[i];
    const std::uint32_t sign = (h & 0x8000u) << 16;
    std::uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
      if (mant == 0) {
        bits = sign;
      } else {  // subnormal: normalise
        int e = -1;
        do { ++e; mant <<= 1; } while (!(mant & 0x400));
        bits = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
      }
    } else if (exp == 31) {
      bits = sign | 0x7f800000u | (mant << 13);
    } else {
      bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    std::memcpy(out + i, &bits, 4);
  }
}

void widen_bf16(const std::uint16_t* in, float* out, i64 n) {
  for (i64 i = 0; i < n; ++i) {
    const std::uint32_t bits = static_cast<std::uint32_t>(in[i]) << 16;
    std::memcpy(out + i, &bits, 4);
  }
}

i64 count_nonfinite(const float* x, i64 n) {
  i64 c = 0;
  for (i64 i = 0; i < n; ++i) c += !std::isfinite(x[i]);
  return c;
}

float scaled_softmax_inplace(float* x, i64 n, float scale) {
  float m = -std::numeric_limits<float>::infinity();
  for (i64 i = 0; i < n; ++i) m = std::max(m, x[i] * scale);
  float s = 0.f;
  for (i64 i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] * scale - m);
    s += x[i];
  }
  const float inv = 1.f / s;
  for (i64 i = 0; i < n; ++i) x[i] *= inv;
  return m + std::log(s);
}

float softmax_inplace(float* x, i64 n) { return scaled_softmax_inplace(x, n, 1.f); }

float sum(const float* x, i64 n) {
  float s = 0.f;
  for (i64 i = 0; i < n; ++i) s += x[i];
  return s;
}

float masked_sum(const float* x, const std::uint8_t* mask, i64 n) {
  float s = 0.f;
  for (i64 i = 0; i < n; ++i) s += mask[i] ? x[i] : 0.f;
  return s;
}

float dot(const float* a, const float* b, i64 n) {
  float s = 0.f;
  for (i64 i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

float abs_sum(const float* x, i64 n) {
  float s = 0.f;
  for (i64 i = 0; i < n; ++i) s += std::fabs(x[i]);
  return s;
}

float max_value(const float* x, i64 n) {
  float m = -std::numeric_limits<float>::infinity();
  for (i64 i = 0; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

void masked_weighted_rowsum(const float* w, const std::uint8_t* mask, const float* rows, i64 n,
                            i64 d, i64 ld, float* out) {
  for (i64 j = 0; j < n; ++j) {
    if (!mask[j]) continue;
    const float wj = w[j];
    const float* r = rows + j * ld;
    for (i64 c = 0; c < d; ++c) out[c] += wj * r[c];
  }
}

void row_abs_sums(const float* m, i64 rows, i64 cols, i64 ld, float* out) {
  for (i64 i = 0; i < rows; ++i) out[i] = abs_sum(m + i * ld, cols);
}

void row_quadratic_forms(const float* x, i64 rows, i64 d, const float* G, float* out) {
  for (i64 i = 0; i < rows; ++i) {
    const float* xi = x + i * d;
    float s = 0.f;
    for (i64 a = 0; a < d; ++a) s += xi[a] * dot(G + a * d, xi, d);
    out[i] = s;
  }
}

void avg_pool1d(const float* x, i64 n, int k, float* out) {
  const i64 r = k / 2;
  for (i64 j = 0; j < n; ++j) {
    float s = 0.f;
    for (i64 i = std::max<i64>(0, j - r); i <= std::min<i64>(n - 1, j + r); ++i) s += x[i];
    out[j] = s / static_cast<float>(k);
  }
}

void max_pool1d(const float* x, i64 n, int k, float* out) {
  const i64 r = k / 2;
  for (i64 j = 0; j < n; ++j) {
    float m = -std::numeric_limits<float>::infinity();
    for (i64 i = std::max<i64>(0, j - r); i <= std::min<i64>(n - 1, j + r); ++i) m = std::max(m, x[i]);
    out[j] = m;
  }
}

void group_reduce(const float* x, int g, i64 n, i64 ld, GroupOp op, float* out) {
  for (i64 j = 0; j < n; ++j) {
    float acc = x[j];
    for (int r = 1; r < g; ++r) {
      const float v = x[r * ld + j];
      acc = op == GroupOp::max ? std::max(acc, v) : acc + v;
    }
    out[j] = op == GroupOp::mean ? acc / static_cast<float>(g) : acc;
  }
}

void axpy(float a, const float* x, float* y, i64 n) {
  for (i64 i = 0; i < n; ++i) {
    const float p = a * x[i];  // a separate statement: never contracted into an FMA
    y[i] += p;
  }
}

void scale(float* x, i64 n, float a) {
  for (i64 i = 0; i < n; ++i) x[i] *= a;
}

i64 topk(const float* score, i64 n, i64 k, i64* idx) {
  std::vector<i64> order;
  order.reserve(n);
  for (i64 j = 0; j < n; ++j)
    if (!std::isnan(score[j])) order.push_back(j);
  k = std::min<i64>(k, static_cast<i64>(order.size()));
  if (k <= 0) return 0;
  auto better = [score](i64 a, i64 b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
  std::copy(order.begin(), order.begin() + k, idx);
  return k;
}

}  // namespace kvsim::kernels::scalar
