// AVX-512 format conversions and the non-finite count. Both widenings are bit-exact with the
// scalar reference (vcvtph2ps is exact for every binary16 value); the only difference is that a
// signalling f16 NaN comes out quiet, which is still a NaN.
#include "kernels/kernels.h"
#include "kernels/simd_avx512.h"

namespace kvsim::kernels::avx512 {

void widen_f16(const std::uint16_t* in, float* out, i64 n) {
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i + 16));
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(a));
    _mm512_storeu_ps(out + i + 16, _mm512_cvtph_ps(b));
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m256i a = _mm256_maskz_loadu_epi16(k, in + i);
    _mm512_mask_storeu_ps(out + i, k, _mm512_cvtph_ps(a));
  }
}

void widen_bf16(const std::uint16_t* in, float* out, i64 n) {
  for (i64 i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, in + i));
    _mm512_mask_storeu_ps(out + i, k, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
}

i64 count_nonfinite(const float* x, i64 n) {
  // A float is non-finite iff its exponent field is all ones.
  const __m512i exp_bits = _mm512_set1_epi32(0x7f800000);
  i64 c = 0;
  for (i64 i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512i v = _mm512_castps_si512(_mm512_maskz_loadu_ps(k, x + i));
    const __mmask16 bad = _mm512_mask_cmpeq_epi32_mask(k, _mm512_and_si512(v, exp_bits), exp_bits);
    c += __builtin_popcount(static_cast<unsigned>(bad));
  }
  return c;
}

}  // namespace kvsim::kernels::avx512
