// AVX-512 kernels over rows of a matrix. masked_weighted_rowsum vectorises over the row
// (columns, 64 at a time in registers) and walks the kept rows in order with separate multiply
// and add, so it is bit-exact with the reference. row_abs_sums reassociates each row sum (see
// reduce_avx512.cpp). row_quadratic_forms computes x^T (G x) as (x^T G) x: t = sum_a x_a G[a,:]
// then t.x, a different association than the reference (few-ulp differences, relative to
// sum |x_a G_ab x_b|).
#include <vector>

#include "kernels/kernels.h"
#include "kernels/simd_avx512.h"

namespace kvsim::kernels::avx512 {

void masked_weighted_rowsum(const float* w, const std::uint8_t* mask, const float* rows, i64 n,
                            i64 d, i64 ld, float* out) {
  for (i64 c0 = 0; c0 < d; c0 += 64) {
    const __mmask16 k0 = tail_mask(d - c0), k1 = tail_mask(d - c0 - 16);
    const __mmask16 k2 = tail_mask(d - c0 - 32), k3 = tail_mask(d - c0 - 48);
    __m512 a0 = _mm512_maskz_loadu_ps(k0, out + c0);
    __m512 a1 = d - c0 > 16 ? _mm512_maskz_loadu_ps(k1, out + c0 + 16) : _mm512_setzero_ps();
    __m512 a2 = d - c0 > 32 ? _mm512_maskz_loadu_ps(k2, out + c0 + 32) : _mm512_setzero_ps();
    __m512 a3 = d - c0 > 48 ? _mm512_maskz_loadu_ps(k3, out + c0 + 48) : _mm512_setzero_ps();
    for (i64 j = 0; j < n; ++j) {
      if (!mask[j]) continue;
      const __m512 wj = _mm512_set1_ps(w[j]);
      const float* r = rows + j * ld + c0;
      a0 = add_exact(a0, mul_exact(wj, _mm512_maskz_loadu_ps(k0, r)));
      if (d - c0 <= 16) continue;
      a1 = add_exact(a1, mul_exact(wj, _mm512_maskz_loadu_ps(k1, r + 16)));
      if (d - c0 <= 32) continue;
      a2 = add_exact(a2, mul_exact(wj, _mm512_maskz_loadu_ps(k2, r + 32)));
      if (d - c0 <= 48) continue;
      a3 = add_exact(a3, mul_exact(wj, _mm512_maskz_loadu_ps(k3, r + 48)));
    }
    _mm512_mask_storeu_ps(out + c0, k0, a0);
    if (d - c0 > 16) _mm512_mask_storeu_ps(out + c0 + 16, k1, a1);
    if (d - c0 > 32) _mm512_mask_storeu_ps(out + c0 + 32, k2, a2);
    if (d - c0 > 48) _mm512_mask_storeu_ps(out + c0 + 48, k3, a3);
  }
}

void row_abs_sums(const float* m, i64 rows, i64 cols, i64 ld, float* out) {
  for (i64 i = 0; i < rows; ++i) out[i] = abs_sum(m + i * ld, cols);
}

void row_quadratic_forms(const float* x, i64 rows, i64 d, const float* G, float* out) {
  alignas(64) float stack_t[256];
  std::vector<float> heap_t(d > 256 ? static_cast<std::size_t>(d) : 0);
  float* t = d > 256 ? heap_t.data() : stack_t;
  for (i64 i = 0; i < rows; ++i) {
    const float* xi = x + i * d;
    for (i64 b = 0; b < d; b += 16) _mm512_mask_storeu_ps(t + b, tail_mask(d - b), _mm512_setzero_ps());
    for (i64 a = 0; a < d; ++a) {
      const __m512 xa = _mm512_set1_ps(xi[a]);
      const float* g = G + a * d;
      for (i64 b = 0; b < d; b += 16) {
        const __mmask16 k = tail_mask(d - b);
        const __m512 tb = _mm512_maskz_loadu_ps(k, t + b);
        _mm512_mask_storeu_ps(t + b, k, _mm512_fmadd_ps(xa, _mm512_maskz_loadu_ps(k, g + b), tb));
      }
    }
    out[i] = dot(t, xi, d);
  }
}

}  // namespace kvsim::kernels::avx512
