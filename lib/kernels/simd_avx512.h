#pragma once
// Helpers shared by the *_avx512.cpp kernel files (only they are compiled with AVX-512 flags;
// never include this header from a file without them).
#include <cmath>
#include <cstdint>

#include <immintrin.h>

// GCC 12's _mm512_undefined_*() (used inside many intrinsics) self-initialises a variable and
// trips -W(maybe-)uninitialized where inlined (GCC bug 105593, fixed in GCC 13).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include "core/types.h"

namespace kvsim::kernels::avx512 {

// Multiply and add that are never fused into an FMA (GCC contracts the generic-vector forms
// behind _mm512_mul_ps/_mm512_add_ps in C++): kernels that promise bit-identical results to
// the scalar reference use these.
inline __m512 mul_exact(__m512 a, __m512 b) { return _mm512_mul_round_ps(a, b, _MM_FROUND_CUR_DIRECTION); }
inline __m512 sub_exact(__m512 a, __m512 b) { return _mm512_sub_round_ps(a, b, _MM_FROUND_CUR_DIRECTION); }
inline __m512 add_exact(__m512 a, __m512 b) { return _mm512_add_round_ps(a, b, _MM_FROUND_CUR_DIRECTION); }

// Lanes [0, n) of a 16-lane vector (n is clamped to [0, 16]): the masked tail of a loop.
inline __mmask16 tail_mask(i64 n) {
  if (n <= 0) return 0;
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// Lanes whose mask byte is non-zero (16 bytes of a uint8 mask -> a 16-bit lane mask).
inline __mmask16 byte_mask(const std::uint8_t* m, __mmask16 valid) {
  const __m128i bytes = _mm_maskz_loadu_epi8(valid, m);
  return _mm_test_epi8_mask(bytes, bytes);
}

// exp(x) for 16 floats, within ~1 ulp of a correctly rounded result over the whole float range:
// Cody-Waite reduction x = n ln2 + r (|r| <= ln2/2, two-part ln2 with FMA), the Cephes minimax
// polynomial for exp(r), and scalef for 2^n, which rounds subnormal results correctly and gives
// exactly 0 below ~-103.97 and +inf above ~88.72. NaN propagates; exp(-inf) = 0.
inline __m512 exp_ps(__m512 x) {
  // Clamp so that n stays finite: outside [-110, 100] exp is 0 or +inf anyway. The argument
  // order of max/min keeps a NaN x (they return the second operand when either is NaN).
  x = _mm512_max_ps(_mm512_set1_ps(-110.f), x);
  x = _mm512_min_ps(_mm512_set1_ps(100.f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r);
  p = _mm512_add_ps(p, _mm512_set1_ps(1.f));
  // Below -104 the result rounds to 0 (exp(-104) < half the smallest denormal); zeroing p there
  // gives the same 0 without an underflowing scalef, which costs a microcode assist per lane on
  // Intel cores (masked-out logits of -inf made ThinK's softmax ~30x slower). NaN lanes pass.
  p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.f), _CMP_NLT_UQ), p);
  return _mm512_scalef_ps(p, n);
}

}  // namespace kvsim::kernels::avx512
