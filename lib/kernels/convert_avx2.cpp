// AVX2 format conversions and the non-finite count, bit-exact with the scalar reference (as the
// AVX-512 ones: vcvtph2ps is exact; a signalling f16 NaN comes out quiet). Tails go through a
// small buffer so that no byte past n is read or written.
#include <algorithm>

#include "kernels/kernels.h"
#include "kernels/simd_avx2.h"

namespace kvsim::kernels::avx2 {
namespace {

template <class Widen8>
void widen(const std::uint16_t* in, float* out, i64 n, Widen8 widen8) {
  i64 i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, widen8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  if (i == n) return;
  alignas(16) std::uint16_t h[8] = {};
  std::copy(in + i, in + n, h);
  store_tail(out + i, tail_mask(n - i), widen8(_mm_load_si128(reinterpret_cast<const __m128i*>(h))));
}

}  // namespace

void widen_f16(const std::uint16_t* in, float* out, i64 n) {
  widen(in, out, n, [](__m128i h) { return _mm256_cvtph_ps(h); });
}

void widen_bf16(const std::uint16_t* in, float* out, i64 n) {
  widen(in, out, n, [](__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); });
}

i64 count_nonfinite(const float* x, i64 n) {
  // Non-finite iff the exponent field is all ones; masked-off tail lanes load as 0 (finite).
  const __m256i exp_bits = _mm256_set1_epi32(0x7f800000);
  i64 c = 0;
  for (i64 i = 0; i < n; i += 8) {
    const __m256i v = _mm256_castps_si256(load_tail(x + i, tail_mask(n - i)));
    const __m256i bad = _mm256_cmpeq_epi32(_mm256_and_si256(v, exp_bits), exp_bits);
    c += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(bad))));
  }
  return c;
}

}  // namespace kvsim::kernels::avx2
