// AVX-512 KV quantization kernels (kernels.h): eight values per float64 vector, the same IEEE
// operations in the same order as the scalar reference, so every bit agrees; group tails go
// through the scalar code.
#include <algorithm>

#include "kernels/kernels.h"
#include "kernels/simd_avx512.h"

namespace kvsim::kernels::avx512 {

void group_min_max(const float* x, i64 groups, i64 g, float* mn, float* mx) {
  for (i64 i = 0; i < groups; ++i) {
    const float* p = x + i * g;
    __m512 lo = _mm512_set1_ps(p[0]), hi = lo;
    i64 j = 0;
    for (; j + 16 <= g; j += 16) {
      const __m512 v = _mm512_loadu_ps(p + j);
      lo = _mm512_min_ps(lo, v);
      hi = _mm512_max_ps(hi, v);
    }
    alignas(64) float l[16], h[16];
    _mm512_store_ps(l, lo);
    _mm512_store_ps(h, hi);
    float a = l[0], b = h[0];
    for (int k = 1; k < 16; ++k) {
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
  const __m512d vlo = _mm512_set1_pd(lo), vhi = _mm512_set1_pd(hi);
  for (i64 i = 0; i < groups; ++i) {
    const __m512d s = _mm512_set1_pd(scale[i]), z = _mm512_set1_pd(zero[i]);
    const i64 base = i * g;
    i64 j = 0;
    for (; j + 8 <= g; j += 8) {
      const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + base + j));
      __m512d q = _mm512_roundscale_pd(_mm512_div_pd(_mm512_sub_pd(v, z), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      q = _mm512_min_pd(vhi, _mm512_max_pd(vlo, q));
      const __m256i q32 = _mm512_cvtpd_epi32(q);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + base + j),
                       _mm_packs_epi32(_mm256_castsi256_si128(q32), _mm256_extracti128_si256(q32, 1)));
      _mm256_storeu_ps(xhat + base + j, _mm512_cvtpd_ps(_mm512_add_pd(_mm512_mul_pd(q, s), z)));
    }
    if (j < g) scalar::quant_affine(x + base + j, 1, g - j, scale + i, zero + i, lo, hi, codes + base + j, xhat + base + j);
  }
}

void quant_minifloat(const float* x, i64 n, int mant, int min_exp, double max, float* xhat) {
  const __m512i exp_mask = _mm512_set1_epi64(0x7ff), bias = _mm512_set1_epi64(1023);
  const __m512i floor_e = _mm512_set1_epi64(min_exp), shift = _mm512_set1_epi64(1023 - mant);
  const __m512d vmax = _mm512_set1_pd(max), vmin = _mm512_set1_pd(-max);
  i64 j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + j));
    // The leading bit's exponent (floored at min_exp) gives the step 2^(e - mant).
    __m512i e = _mm512_sub_epi64(_mm512_and_si512(_mm512_srli_epi64(_mm512_castpd_si512(v), 52), exp_mask), bias);
    e = _mm512_max_epi64(e, floor_e);
    const __m512d step = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(e, shift), 52));
    const __m512d r =
        _mm512_mul_pd(_mm512_roundscale_pd(_mm512_div_pd(v, step), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), step);
    _mm256_storeu_ps(xhat + j, _mm512_cvtpd_ps(_mm512_min_pd(vmax, _mm512_max_pd(vmin, r))));
  }
  if (j < n) scalar::quant_minifloat(x + j, n - j, mant, min_exp, max, xhat + j);
}

}  // namespace kvsim::kernels::avx512
