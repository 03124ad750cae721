// AVX-512 pooling and group reduction, vectorised over output positions. Every output adds (or
// maxes) its inputs in the same order as the reference, with +0 (avg) or -inf (max) in place of
// out-of-range inputs, which leaves the result unchanged: all three are bit-exact with scalar.
#include "kernels/kernels.h"
#include "kernels/simd_avx512.h"

namespace kvsim::kernels::avx512 {
namespace {

// Lanes l of the block starting at position p (p may be negative) with 0 <= p + l < n.
inline __mmask16 in_range(i64 p, i64 n) {
  return static_cast<__mmask16>(tail_mask(n - p) & ~tail_mask(-p));
}

}  // namespace

void avg_pool1d(const float* x, i64 n, int k, float* out) {
  const i64 r = k / 2;
  const __m512 vk = _mm512_set1_ps(static_cast<float>(k));
  for (i64 j = 0; j < n; j += 16) {
    if (j - r >= 0 && j + 15 + r < n) {  // whole window in range: plain loads, same order
      __m512 s = _mm512_setzero_ps();
      for (i64 t = -r; t <= r; ++t) s = _mm512_add_ps(s, _mm512_loadu_ps(x + j + t));
      _mm512_storeu_ps(out + j, _mm512_div_ps(s, vk));
      continue;
    }
    __m512 s = _mm512_setzero_ps();
    for (i64 t = -r; t <= r; ++t) {
      const i64 p = j + t;
      const __mmask16 m = in_range(p, n);
      if (m) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(m, x + p));
    }
    _mm512_mask_storeu_ps(out + j, tail_mask(n - j), _mm512_div_ps(s, vk));
  }
}

void max_pool1d(const float* x, i64 n, int k, float* out) {
  const i64 r = k / 2;
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  for (i64 j = 0; j < n; j += 16) {
    if (j - r >= 0 && j + 15 + r < n) {  // whole window in range: plain loads
      __m512 m = ninf;
      for (i64 t = -r; t <= r; ++t) m = _mm512_max_ps(_mm512_loadu_ps(x + j + t), m);
      _mm512_storeu_ps(out + j, m);
      continue;
    }
    __m512 m = ninf;
    for (i64 t = -r; t <= r; ++t) {
      const i64 p = j + t;
      const __mmask16 in = in_range(p, n);
      // max(v, m) keeps m when v is NaN, like std::max(m, v) in the reference.
      if (in) m = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, in, x + p), m);
    }
    _mm512_mask_storeu_ps(out + j, tail_mask(n - j), m);
  }
}

void group_reduce(const float* x, int g, i64 n, i64 ld, GroupOp op, float* out) {
  const __m512 vg = _mm512_set1_ps(static_cast<float>(g));
  for (i64 j = 0; j < n; j += 16) {
    const __mmask16 k = tail_mask(n - j);
    __m512 acc = _mm512_maskz_loadu_ps(k, x + j);
    for (int r = 1; r < g; ++r) {
      const __m512 v = _mm512_maskz_loadu_ps(k, x + r * ld + j);
      // max(v, acc) == std::max(acc, v) including NaN handling.
      acc = op == GroupOp::max ? _mm512_max_ps(v, acc) : _mm512_add_ps(acc, v);
    }
    if (op == GroupOp::mean) acc = _mm512_div_ps(acc, vg);
    _mm512_mask_storeu_ps(out + j, k, acc);
  }
}

}  // namespace kvsim::kernels::avx512
