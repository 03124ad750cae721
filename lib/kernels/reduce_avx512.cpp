// AVX-512 reductions over one vector, plus axpy/scale. Sums use 4 independent 16-lane
// accumulators (64 partial sums, combined pairwise at the end): they differ from the scalar
// left-to-right sum by reassociation only, |diff| <~ n * eps * sum|terms| in the worst case and
// usually far less (the partial sums are shorter, so the SIMD result is typically the more
// accurate one). dot uses FMA. max_value, axpy and scale are bit-exact with the reference.
#include "kernels/kernels.h"
#include "kernels/simd_avx512.h"

namespace kvsim::kernels::avx512 {
namespace {

// Drives a 4-accumulator reduction: term(i, mask) returns the 16 terms starting at i (masked
// lanes must be 0).
template <class Term>
float reduce_add(i64 n, Term term) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const __mmask16 all = 0xFFFF;
  i64 i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, term(i, all));
    a1 = _mm512_add_ps(a1, term(i + 16, all));
    a2 = _mm512_add_ps(a2, term(i + 32, all));
    a3 = _mm512_add_ps(a3, term(i + 48, all));
  }
  for (; i < n; i += 16) a0 = _mm512_add_ps(a0, term(i, tail_mask(n - i)));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

}  // namespace

float sum(const float* x, i64 n) {
  return reduce_add(n, [x](i64 i, __mmask16 k) { return _mm512_maskz_loadu_ps(k, x + i); });
}

float masked_sum(const float* x, const std::uint8_t* mask, i64 n) {
  return reduce_add(n, [x, mask](i64 i, __mmask16 k) {
    return _mm512_maskz_loadu_ps(byte_mask(mask + i, k), x + i);
  });
}

float abs_sum(const float* x, i64 n) {
  return reduce_add(n, [x](i64 i, __mmask16 k) { return _mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + i)); });
}

float dot(const float* a, const float* b, i64 n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  i64 i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), a3);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

float max_value(const float* x, i64 n) {
  // max(v, acc) returns acc when v is NaN: NaN is skipped exactly as std::max(acc, v) does.
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  __m512 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  i64 i = 0;
  for (; i + 64 <= n; i += 64) {
    m0 = _mm512_max_ps(_mm512_loadu_ps(x + i), m0);
    m1 = _mm512_max_ps(_mm512_loadu_ps(x + i + 16), m1);
    m2 = _mm512_max_ps(_mm512_loadu_ps(x + i + 32), m2);
    m3 = _mm512_max_ps(_mm512_loadu_ps(x + i + 48), m3);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    m0 = _mm512_mask_max_ps(m0, k, _mm512_maskz_loadu_ps(k, x + i), m0);
  }
  return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}

void axpy(float a, const float* x, float* y, i64 n) {
  const __m512 va = _mm512_set1_ps(a);
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {  // no FMA: bit-exact with the reference
    const __m512 y0 = add_exact(_mm512_loadu_ps(y + i), mul_exact(va, _mm512_loadu_ps(x + i)));
    const __m512 y1 = add_exact(_mm512_loadu_ps(y + i + 16), mul_exact(va, _mm512_loadu_ps(x + i + 16)));
    _mm512_storeu_ps(y + i, y0);
    _mm512_storeu_ps(y + i + 16, y1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 p = mul_exact(va, _mm512_maskz_loadu_ps(k, x + i));
    _mm512_mask_storeu_ps(y + i, k, add_exact(_mm512_maskz_loadu_ps(k, y + i), p));
  }
}

void scale(float* x, i64 n, float a) {
  const __m512 va = _mm512_set1_ps(a);
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), va));
    _mm512_storeu_ps(x + i + 16, _mm512_mul_ps(_mm512_loadu_ps(x + i + 16), va));
  }
  for (; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), va));
  }
}

}  // namespace kvsim::kernels::avx512
