// AVX-512 softmax: max pass, exp-and-sum pass, normalise pass. Differences from the scalar
// reference: exp_ps is within ~1 ulp of std::exp, and the sum uses 4 independent accumulators
// (reassociation), so each output differs by a few ulp at most; the returned log-sum-exp by
// ~1e-7 relative. The arguments x * scale - max are rounded exactly as in the reference (no FMA).
#include <cmath>

#include "kernels/kernels.h"
#include "kernels/simd_avx512.h"

namespace kvsim::kernels::avx512 {

float scaled_softmax_inplace(float* x, i64 n, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  // max(v, acc) keeps acc when v is NaN, so NaN inputs are ignored here, as in the reference.
  __m512 m0 = ninf, m1 = ninf;
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vs), m0);
    m1 = _mm512_max_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i + 16), vs), m1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    m0 = _mm512_mask_max_ps(m0, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vs), m0);
  }
  const float m = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
  const __m512 vm = _mm512_set1_ps(m);

  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 e0 = exp_ps(sub_exact(mul_exact(_mm512_loadu_ps(x + i), vs), vm));
    const __m512 e1 = exp_ps(sub_exact(mul_exact(_mm512_loadu_ps(x + i + 16), vs), vm));
    _mm512_storeu_ps(x + i, e0);
    _mm512_storeu_ps(x + i + 16, e1);
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 e = exp_ps(sub_exact(mul_exact(_mm512_maskz_loadu_ps(k, x + i), vs), vm));
    _mm512_mask_storeu_ps(x + i, k, e);
    s0 = _mm512_mask_add_ps(s0, k, s0, e);
  }
  const float s = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));

  const __m512 inv = _mm512_set1_ps(1.f / s);
  for (i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
  }
  return m + std::log(s);
}

float softmax_inplace(float* x, i64 n) { return scaled_softmax_inplace(x, n, 1.f); }

}  // namespace kvsim::kernels::avx512
