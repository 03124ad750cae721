// AVX2 reductions over one vector, plus axpy/scale: 4 independent 8-lane accumulators (32
// partial sums, reassociation only, as reduce_avx512.cpp with half the lanes); dot uses FMA.
// max_value, axpy and scale are bit-exact with the reference.
#include "kernels/kernels.h"
#include "kernels/simd_avx2.h"

namespace kvsim::kernels::avx2 {
namespace {

// term(i, tail) returns the 8 terms starting at i; lanes outside tail must come out 0.
template <class Term>
float reduce_add(i64 n, Term term) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  const __m256i all = _mm256_set1_epi32(-1);
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, term(i, all, 8));
    a1 = _mm256_add_ps(a1, term(i + 8, all, 8));
    a2 = _mm256_add_ps(a2, term(i + 16, all, 8));
    a3 = _mm256_add_ps(a3, term(i + 24, all, 8));
  }
  for (; i < n; i += 8) a0 = _mm256_add_ps(a0, term(i, tail_mask(n - i), n - i));
  return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

}  // namespace

float sum(const float* x, i64 n) {
  return reduce_add(n, [x](i64 i, __m256i t, i64) { return load_tail(x + i, t); });
}

float masked_sum(const float* x, const std::uint8_t* mask, i64 n) {
  // The AND clears masked-out lanes whatever they hold (NaN, inf).
  return reduce_add(n, [x, mask](i64 i, __m256i t, i64 c) {
    return _mm256_and_ps(load_tail(x + i, t), byte_mask(mask + i, c));
  });
}

float abs_sum(const float* x, i64 n) {
  return reduce_add(n, [x](i64 i, __m256i t, i64) { return abs_ps(load_tail(x + i, t)); });
}

float dot(const float* a, const float* b, i64 n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
    a2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), a2);
    a3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), a3);
  }
  for (; i < n; i += 8) {
    const __m256i t = tail_mask(n - i);
    a0 = _mm256_fmadd_ps(load_tail(a + i, t), load_tail(b + i, t), a0);
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

float max_value(const float* x, i64 n) {
  // max(v, acc) returns acc when v is NaN: NaN is skipped exactly as std::max(acc, v) does.
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  __m256 m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
  i64 i = 0;
  for (; i + 32 <= n; i += 32) {
    m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
    m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
    m2 = _mm256_max_ps(_mm256_loadu_ps(x + i + 16), m2);
    m3 = _mm256_max_ps(_mm256_loadu_ps(x + i + 24), m3);
  }
  for (; i < n; i += 8) {
    const __m256i t = tail_mask(n - i);
    m0 = _mm256_max_ps(_mm256_blendv_ps(ninf, load_tail(x + i, t), _mm256_castsi256_ps(t)), m0);
  }
  return hmax(_mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3)));
}

void axpy(float a, const float* x, float* y, i64 n) {
  const __m256 va = _mm256_set1_ps(a);  // multiply, then add (the file is built without contraction)
  i64 i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(va, _mm256_loadu_ps(x + i))));
    _mm256_storeu_ps(y + i + 8, _mm256_add_ps(_mm256_loadu_ps(y + i + 8), _mm256_mul_ps(va, _mm256_loadu_ps(x + i + 8))));
  }
  for (; i < n; i += 8) {
    const __m256i t = tail_mask(n - i);
    store_tail(y + i, t, _mm256_add_ps(load_tail(y + i, t), _mm256_mul_ps(va, load_tail(x + i, t))));
  }
}

void scale(float* x, i64 n, float a) {
  const __m256 va = _mm256_set1_ps(a);
  i64 i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), va));
  if (i < n) {
    const __m256i t = tail_mask(n - i);
    store_tail(x + i, t, _mm256_mul_ps(load_tail(x + i, t), va));
  }
}

}  // namespace kvsim::kernels::avx2
