// AVX2 pooling and group reduction, vectorised over output positions; every output adds (or
// maxes) its inputs in the reference's order with +0 (avg) or -inf (max) for out-of-range
// inputs: bit-exact with scalar, as pool_avx512.cpp.
#include "kernels/kernels.h"
#include "kernels/simd_avx2.h"

namespace kvsim::kernels::avx2 {
namespace {

// Lanes l of the block starting at position p (p may be negative) with 0 <= p + l < n.
inline __m256i in_range(i64 p, i64 n) { return _mm256_andnot_si256(tail_mask(-p), tail_mask(n - p)); }
inline bool any(__m256i m) { return !_mm256_testz_si256(m, m); }

}  // namespace

void avg_pool1d(const float* x, i64 n, int k, float* out) {
  const i64 r = k / 2;
  const __m256 vk = _mm256_set1_ps(static_cast<float>(k));
  for (i64 j = 0; j < n; j += 8) {
    __m256 s = _mm256_setzero_ps();
    if (j - r >= 0 && j + 7 + r < n) {  // whole window in range: plain loads, same order
      for (i64 t = -r; t <= r; ++t) s = _mm256_add_ps(s, _mm256_loadu_ps(x + j + t));
      _mm256_storeu_ps(out + j, _mm256_div_ps(s, vk));
      continue;
    }
    for (i64 t = -r; t <= r; ++t) {
      const __m256i m = in_range(j + t, n);
      if (any(m)) s = _mm256_add_ps(s, load_tail(x + j + t, m));
    }
    store_tail(out + j, tail_mask(n - j), _mm256_div_ps(s, vk));
  }
}

void max_pool1d(const float* x, i64 n, int k, float* out) {
  const i64 r = k / 2;
  const __m256 ninf = _mm256_set1_ps(-INFINITY);
  for (i64 j = 0; j < n; j += 8) {
    __m256 m = ninf;
    if (j - r >= 0 && j + 7 + r < n) {
      for (i64 t = -r; t <= r; ++t) m = _mm256_max_ps(_mm256_loadu_ps(x + j + t), m);
      _mm256_storeu_ps(out + j, m);
      continue;
    }
    for (i64 t = -r; t <= r; ++t) {
      const __m256i in = in_range(j + t, n);
      // max(v, m) keeps m when v is NaN, like std::max(m, v) in the reference.
      if (any(in)) m = _mm256_max_ps(_mm256_blendv_ps(ninf, load_tail(x + j + t, in), _mm256_castsi256_ps(in)), m);
    }
    store_tail(out + j, tail_mask(n - j), m);
  }
}

void group_reduce(const float* x, int g, i64 n, i64 ld, GroupOp op, float* out) {
  const __m256 vg = _mm256_set1_ps(static_cast<float>(g));
  for (i64 j = 0; j < n; j += 8) {
    const __m256i k = tail_mask(n - j);
    __m256 acc = load_tail(x + j, k);
    for (int r = 1; r < g; ++r) {
      const __m256 v = load_tail(x + r * ld + j, k);
      acc = op == GroupOp::max ? _mm256_max_ps(v, acc) : _mm256_add_ps(acc, v);  // == std::max(acc, v)
    }
    if (op == GroupOp::mean) acc = _mm256_div_ps(acc, vg);
    store_tail(out + j, k, acc);
  }
}

}  // namespace kvsim::kernels::avx2
