// AVX2 softmax, the same three passes as softmax_avx512.cpp (max, exp-and-sum, normalise):
// exp_ps within ~1 ulp, a reassociated sum, so a few ulp per output; x * scale - max is rounded
// exactly as in the reference (the file is built without FMA contraction).
#include <cmath>

#include "kernels/kernels.h"
#include "kernels/simd_avx2.h"

namespace kvsim::kernels::avx2 {

float scaled_softmax_inplace(float* x, i64 n, float scale) {
  const __m256 vs = _mm256_set1_ps(scale);
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  __m256 m0 = ninf, m1 = ninf;  // max(v, acc) keeps acc when v is NaN, as the reference
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    m0 = _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), m0);
    m1 = _mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vs), m1);
  }
  for (; i < n; i += 8) {
    const __m256i t = tail_mask(n - i);
    const __m256 v = _mm256_mul_ps(load_tail(x + i, t), vs);
    m0 = _mm256_max_ps(_mm256_blendv_ps(ninf, v, _mm256_castsi256_ps(t)), m0);
  }
  const float m = hmax(_mm256_max_ps(m0, m1));
  const __m256 vm = _mm256_set1_ps(m);

  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 e0 = exp_ps(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), vm));
    const __m256 e1 = exp_ps(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vs), vm));
    _mm256_storeu_ps(x + i, e0);
    _mm256_storeu_ps(x + i + 8, e1);
    s0 = _mm256_add_ps(s0, e0);
    s1 = _mm256_add_ps(s1, e1);
  }
  for (; i < n; i += 8) {
    const __m256i t = tail_mask(n - i);
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_mul_ps(load_tail(x + i, t), vs), vm));
    store_tail(x + i, t, e);
    s0 = _mm256_add_ps(s0, _mm256_and_ps(e, _mm256_castsi256_ps(t)));
  }
  const float s = hsum(_mm256_add_ps(s0, s1));

  const __m256 inv = _mm256_set1_ps(1.f / s);
  for (i = 0; i < n; i += 8) {
    const __m256i t = tail_mask(n - i);
    store_tail(x + i, t, _mm256_mul_ps(load_tail(x + i, t), inv));
  }
  return m + std::log(s);
}

float softmax_inplace(float* x, i64 n) { return scaled_softmax_inplace(x, n, 1.f); }

}  // namespace kvsim::kernels::avx2
