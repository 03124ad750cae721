#pragma once
// Helpers shared by the *_avx2.cpp kernel files (only they are compiled with AVX2 + FMA + F16C
// flags and -ffp-contract=off, so a multiply and an add stay two roundings unless a kernel asks
// for _mm256_fmadd_ps; never include this header from a file without them).
#include <cmath>
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#include "core/types.h"

namespace kvsim::kernels::avx2 {

// Lanes [0, n) of an 8-lane vector as an integer mask (n is clamped to [0, 8]): AVX2 has no
// mask registers, so the tail of a loop uses maskload/maskstore, which never touch other lanes.
// The table is a namespace-scope constant, not a static local of the inline function: ISA files
// are compiled with -fno-weak, where an inline function's static data is not shared.
alignas(32) static constexpr std::int32_t kTailMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                                0,  0,  0,  0,  0,  0,  0,  0};
inline __m256i tail_mask(i64 n) {
  const i64 c = n <= 0 ? 0 : (n >= 8 ? 8 : n);
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMaskTable + 8 - c));
}
inline __m256 load_tail(const float* p, __m256i m) { return _mm256_maskload_ps(p, m); }
inline void store_tail(float* p, __m256i m, __m256 v) { _mm256_maskstore_ps(p, m, v); }

// All-ones lanes where mask byte i != 0, for i < count (count <= 8; bytes past count unread).
inline __m256 byte_mask(const std::uint8_t* m, i64 count) {
  std::uint64_t b = 0;
  std::memcpy(&b, m, static_cast<std::size_t>(count >= 8 ? 8 : (count <= 0 ? 0 : count)));
  const __m256i w = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(b)));
  const __m256i zero = _mm256_cmpeq_epi32(w, _mm256_setzero_si256());
  return _mm256_castsi256_ps(_mm256_xor_si256(zero, _mm256_set1_epi32(-1)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Horizontal max of lanes that hold no NaN (the kernels keep NaN out of their accumulators).
inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m256 abs_ps(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.f), v); }

// exp(x) for 8 floats: the same Cody-Waite reduction and Cephes polynomial as the AVX-512
// exp_ps (~1 ulp). AVX2 has no scalef, so 2^n is applied as two exact powers of two, 2^(n/2) and
// 2^(n - n/2), each a normal float for |n| <= 160: the product rounds once, into the subnormal
// range or to 0 / +inf exactly as scalef does. NaN propagates; exp(-inf) = 0.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-110.f), x);  // max/min return the second operand on NaN
  x = _mm256_min_ps(_mm256_set1_ps(100.f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.f));
  // Below -104 the result rounds to 0 anyway: a zero p avoids the underflowing multiplies and
  // their microcode assists (see simd_avx512.h). NaN lanes pass (unordered compare).
  p = _mm256_and_ps(p, _mm256_cmp_ps(x, _mm256_set1_ps(-104.f), _CMP_NLT_UQ));
  const __m256i ni = _mm256_cvtps_epi32(n);  // n is integral (a NaN x gives garbage, but p is NaN)
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

}  // namespace kvsim::kernels::avx2
