// AVX2 KV quantization kernels (kernels.h): four values per float64 vector, the same IEEE
// operations in the same order as the scalar reference, so every bit agrees; group tails go
// through the scalar code.
#include <algorithm>

#include "kernels/kernels.h"
#include "kernels/simd_avx2.h"

namespace kvsim::kernels::avx2 {

void group_min_max(const float* x, i64 groups, i64 g, float* mn, float* mx) {
  for (i64 i = 0; i < groups; ++i) {
    const float* p = x + i * g;
    __m256 lo = _mm256_set1_ps(p[0]), hi = lo;
    i64 j = 0;
    for (; j + 8 <= g; j += 8) {
      const __m256 v = _mm256_loadu_ps(p + j);
      lo = _mm256_min_ps(lo, v);
      hi = _mm256_max_ps(hi, v);
    }
    alignas(32) float l[8], h[8];
    _mm256_store_ps(l, lo);
    _mm256_store_ps(h, hi);
    float a = l[0], b = h[0];
    for (int k = 1; k < 8; ++k) {
      a = std::min(a, l[k]);
      b = std::max(b, h[k]);
    }
    for (; j < g; ++j) {
      a = std::min(a, p[j]);
      b = std::max(b, p[j]);
    }
    mn[i] = a + 0.0f;  // -0 -> +0, as the scalar reference
    mx[i] = b + 0.0f;
  }
}

void quant_affine(const float* x, i64 groups, i64 g, const double* scale, const double* zero, int lo, int hi,
                  std::int16_t* codes, float* xhat) {
  const __m256d vlo = _mm256_set1_pd(lo), vhi = _mm256_set1_pd(hi);
  for (i64 i = 0; i < groups; ++i) {
    const __m256d s = _mm256_set1_pd(scale[i]), z = _mm256_set1_pd(zero[i]);
    const i64 base = i * g;
    i64 j = 0;
    for (; j + 4 <= g; j += 4) {
      const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + base + j));
      __m256d q = _mm256_round_pd(_mm256_div_pd(_mm256_sub_pd(v, z), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm256_min_pd(vhi, _mm256_max_pd(vlo, q));
      const __m128i q32 = _mm256_cvtpd_epi32(q);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + base + j), _mm_packs_epi32(q32, q32));
      _mm_storeu_ps(xhat + base + j, _mm256_cvtpd_ps(_mm256_add_pd(_mm256_mul_pd(q, s), z)));
    }
    if (j < g) scalar::quant_affine(x + base + j, 1, g - j, scale + i, zero + i, lo, hi, codes + base + j, xhat + base + j);
  }
}

void quant_minifloat(const float* x, i64 n, int mant, int min_exp, double max, float* xhat) {
  const __m256i exp_mask = _mm256_set1_epi64x(0x7ff), bias = _mm256_set1_epi64x(1023);
  const __m256i floor_e = _mm256_set1_epi64x(min_exp), shift = _mm256_set1_epi64x(1023 - mant);
  const __m256d vmax = _mm256_set1_pd(max), vmin = _mm256_set1_pd(-max);
  i64 j = 0;
  for (; j + 4 <= n; j += 4) {
    const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + j));
    // The leading bit's exponent (floored at min_exp) gives the step 2^(e - mant).
    __m256i e = _mm256_sub_epi64(_mm256_and_si256(_mm256_srli_epi64(_mm256_castpd_si256(v), 52), exp_mask), bias);
    e = _mm256_blendv_epi8(e, floor_e, _mm256_cmpgt_epi64(floor_e, e));
    const __m256d step = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(e, shift), 52));
    const __m256d r = _mm256_mul_pd(_mm256_round_pd(_mm256_div_pd(v, step), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), step);
    _mm_storeu_ps(xhat + j, _mm256_cvtpd_ps(_mm256_min_pd(vmax, _mm256_max_pd(vmin, r))));
  }
  if (j < n) scalar::quant_minifloat(x + j, n - j, mant, min_exp, max, xhat + j);
}

}  // namespace kvsim::kernels::avx2
