#pragma once
// AVX-512 on a CPU without it, for testing only (cmake -DKVSIM_EMULATE_AVX512=ON, see
// tools/check-avx512-emulated.sh). Force-included into every *_avx512.cpp of that build, which
// is then compiled for AVX2 + FMA: SIMDe (Debian libsimde-dev) maps each _mm512_* intrinsic onto
// AVX2 halves, and this file adds the ones SIMDe 0.7.4 lacks or emulates loosely. What it checks:
// the AVX-512 kernels' logic (lane arithmetic, masks, tails, reduction order) under the same
// tests as on a real AVX-512 CPU. What it cannot: instruction encodings, hardware fault rules of
// masked memory access beyond "masked lanes are not touched", and speed.
#include <immintrin.h>

#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace kvsim_emulated_avx512 {

inline simde__m512 from_lanes(const float* lanes) {
  simde__m512_private r;
  for (int i = 0; i < 16; ++i) r.f32[i] = lanes[i];
  return simde__m512_from_private(r);
}

// Masked loads and stores touch only the selected lanes (a tail may end at the buffer's end).
template <class Lane, class Dst>
void copy_selected_lanes(Dst& dst, const void* src, simde__mmask16 k) {
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) dst[i] = static_cast<const Lane*>(src)[i];
}
inline simde__m512 mask_loadu_ps(simde__m512 src, simde__mmask16 k, const void* p) {
  simde__m512_private r = simde__m512_to_private(src);
  copy_selected_lanes<float>(r.f32, p, k);
  return simde__m512_from_private(r);
}
inline simde__m512 maskz_loadu_ps(simde__mmask16 k, const void* p) {
  return mask_loadu_ps(simde_mm512_setzero_ps(), k, p);
}
inline void mask_storeu_ps(void* p, simde__mmask16 k, simde__m512 a) {
  const simde__m512_private v = simde__m512_to_private(a);
  float* f = static_cast<float*>(p);
  for (int i = 0; i < 16; ++i)
    if (k >> i & 1) f[i] = v.f32[i];
}
inline simde__m256i maskz_loadu_epi16(simde__mmask16 k, const void* p) {
  simde__m256i_private r = simde__m256i_to_private(simde_mm256_setzero_si256());
  copy_selected_lanes<std::int16_t>(r.i16, p, k);
  return simde__m256i_from_private(r);
}
inline simde__m128i maskz_loadu_epi8(simde__mmask16 k, const void* p) {
  simde__m128i_private r = simde__m128i_to_private(simde_mm_setzero_si128());
  copy_selected_lanes<std::int8_t>(r.i8, p, k);
  return simde__m128i_from_private(r);
}
inline simde__mmask16 test_epi8_mask(simde__m128i a, simde__m128i b) {
  const simde__m128i_private x = simde__m128i_to_private(a), y = simde__m128i_to_private(b);
  simde__mmask16 k = 0;
  for (int i = 0; i < 16; ++i)
    if (x.i8[i] & y.i8[i]) k = static_cast<simde__mmask16>(k | (1u << i));
  return k;
}
inline simde__m512i cvtepu16_epi32(simde__m256i a) {
  const simde__m256i_private s = simde__m256i_to_private(a);
  simde__m512i_private r;
  for (int i = 0; i < 16; ++i) r.i32[i] = static_cast<std::int32_t>(static_cast<std::uint16_t>(s.i16[i]));
  return simde__m512i_from_private(r);
}
inline simde__m512 cvtph_ps(simde__m256i a) {  // F16C on each half: exact, like VCVTPH2PS
  const simde__m256i_private s = simde__m256i_to_private(a);
  simde__m512_private r;
  r.m256[0] = simde_mm256_cvtph_ps(s.m128i[0]);
  r.m256[1] = simde_mm256_cvtph_ps(s.m128i[1]);
  return simde__m512_from_private(r);
}

// The reductions in GCC 12's own order (avx512fintrin.h __MM512_REDUCE_OP): upper 256 op lower
// 256, upper 128 op lower 128, then pairs; the float sums are order-dependent.
inline float reduce_add_ps(simde__m512 a) {
  const simde__m512_private v = simde__m512_to_private(a);
  float t3[8], t6[4];
  for (int i = 0; i < 8; ++i) t3[i] = v.f32[8 + i] + v.f32[i];
  for (int i = 0; i < 4; ++i) t6[i] = t3[4 + i] + t3[i];
  const float t8[2] = {t6[0] + t6[2], t6[1] + t6[3]};
  return t8[0] + t8[1];
}
inline float reduce_max_ps(simde__m512 a) {
  // _mm*_max_ps(x, y) returns y when either is NaN; same operand order as GCC.
  auto mx = [](float x, float y) { return x > y ? x : y; };
  const simde__m512_private v = simde__m512_to_private(a);
  float t3[8], t6[4];
  for (int i = 0; i < 8; ++i) t3[i] = mx(v.f32[8 + i], v.f32[i]);
  for (int i = 0; i < 4; ++i) t6[i] = mx(t3[4 + i], t3[i]);
  const float t8[4] = {mx(t6[0], t6[2]), mx(t6[1], t6[3]), mx(t6[2], t6[0]), mx(t6[3], t6[1])};
  return mx(t8[0], t8[1]);
}

// VSCALEFPS for finite b: a * 2^floor(b), rounded once (ldexp is exact or correctly rounded into
// the subnormal range, as the instruction is; SIMDe's version flushes subnormals).
inline simde__m512 scalef_ps(simde__m512 a, simde__m512 b) {
  const simde__m512_private x = simde__m512_to_private(a), y = simde__m512_to_private(b);
  float r[16];
  for (int i = 0; i < 16; ++i) {
    const float e = std::floor(y.f32[i]);
    if (std::isnan(x.f32[i]) || std::isnan(e)) r[i] = x.f32[i] + e;
    else if (std::isinf(e)) r[i] = e > 0 ? (x.f32[i] == 0 ? NAN : x.f32[i] * INFINITY) : (std::isinf(x.f32[i]) ? NAN : x.f32[i] * 0.f);
    else r[i] = std::ldexp(x.f32[i], static_cast<int>(std::fmax(-400.f, std::fmin(400.f, e))));
  }
  return from_lanes(r);
}

// float <-> double conversions (the quantization kernels): per lane, as the instructions
// convert (float -> double exact; double -> float and -> int32 rounded to nearest even, the
// default MXCSR mode).
inline simde__m512d cvtps_pd(simde__m256 a) {
  const simde__m256_private s = simde__m256_to_private(a);
  simde__m512d_private r;
  for (int i = 0; i < 8; ++i) r.f64[i] = static_cast<double>(s.f32[i]);
  return simde__m512d_from_private(r);
}
inline simde__m256 cvtpd_ps(simde__m512d a) {
  const simde__m512d_private s = simde__m512d_to_private(a);
  simde__m256_private r;
  for (int i = 0; i < 8; ++i) r.f32[i] = static_cast<float>(s.f64[i]);
  return simde__m256_from_private(r);
}
inline simde__m256i cvtpd_epi32(simde__m512d a) {
  const simde__m512d_private s = simde__m512d_to_private(a);
  simde__m256i_private r;
  for (int i = 0; i < 8; ++i) r.i32[i] = static_cast<std::int32_t>(std::nearbyint(s.f64[i]));
  return simde__m256i_from_private(r);
}

// The *_round_ps forms exist in the kernels only to stop FMA contraction; this build compiles
// with -ffp-contract=off, so the plain SIMDe operations are the same (current rounding mode).
inline simde__m512 add_round_ps(simde__m512 a, simde__m512 b) { return simde_mm512_add_ps(a, b); }
inline simde__m512 sub_round_ps(simde__m512 a, simde__m512 b) { return simde_mm512_sub_ps(a, b); }
inline simde__m512 mul_round_ps(simde__m512 a, simde__m512 b) { return simde_mm512_mul_ps(a, b); }

}  // namespace kvsim_emulated_avx512

#undef _mm512_mask_loadu_ps
#undef _mm512_maskz_loadu_ps
#undef _mm512_mask_storeu_ps
#undef _mm256_maskz_loadu_epi16
#undef _mm_maskz_loadu_epi8
#undef _mm_test_epi8_mask
#undef _mm512_cvtepu16_epi32
#undef _mm512_cvtph_ps
#undef _mm512_reduce_add_ps
#undef _mm512_reduce_max_ps
#undef _mm512_scalef_ps
#undef _mm512_cvtps_pd
#undef _mm512_cvtpd_ps
#undef _mm512_cvtpd_epi32
#undef _mm512_add_round_ps
#undef _mm512_sub_round_ps
#undef _mm512_mul_round_ps
#define _mm512_mask_loadu_ps(src, k, p) kvsim_emulated_avx512::mask_loadu_ps(src, k, p)
#define _mm512_maskz_loadu_ps(k, p) kvsim_emulated_avx512::maskz_loadu_ps(k, p)
#define _mm512_mask_storeu_ps(p, k, a) kvsim_emulated_avx512::mask_storeu_ps(p, k, a)
#define _mm256_maskz_loadu_epi16(k, p) kvsim_emulated_avx512::maskz_loadu_epi16(k, p)
#define _mm_maskz_loadu_epi8(k, p) kvsim_emulated_avx512::maskz_loadu_epi8(k, p)
#define _mm_test_epi8_mask(a, b) kvsim_emulated_avx512::test_epi8_mask(a, b)
#define _mm512_cvtepu16_epi32(a) kvsim_emulated_avx512::cvtepu16_epi32(a)
#define _mm512_cvtph_ps(a) kvsim_emulated_avx512::cvtph_ps(a)
#define _mm512_reduce_add_ps(a) kvsim_emulated_avx512::reduce_add_ps(a)
#define _mm512_reduce_max_ps(a) kvsim_emulated_avx512::reduce_max_ps(a)
#define _mm512_scalef_ps(a, b) kvsim_emulated_avx512::scalef_ps(a, b)
#define _mm512_cvtps_pd(a) kvsim_emulated_avx512::cvtps_pd(a)
#define _mm512_cvtpd_ps(a) kvsim_emulated_avx512::cvtpd_ps(a)
#define _mm512_cvtpd_epi32(a) kvsim_emulated_avx512::cvtpd_epi32(a)
#define _mm512_add_round_ps(a, b, r) kvsim_emulated_avx512::add_round_ps(a, b)
#define _mm512_sub_round_ps(a, b, r) kvsim_emulated_avx512::sub_round_ps(a, b)
#define _mm512_mul_round_ps(a, b, r) kvsim_emulated_avx512::mul_round_ps(a, b)
