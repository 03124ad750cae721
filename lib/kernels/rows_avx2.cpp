// AVX2 kernels over rows of a matrix, the same associations as rows_avx512.cpp:
// masked_weighted_rowsum vectorises over 32 columns at a time and walks the kept rows in order
// with separate multiply and add (bit-exact with the reference); row_abs_sums reassociates each
// row sum; row_quadratic_forms computes (x^T G) x (few-ulp differences).
#include <vector>

#include "kernels/kernels.h"
#include "kernels/simd_avx2.h"

namespace kvsim::kernels::avx2 {

void masked_weighted_rowsum(const float* w, const std::uint8_t* mask, const float* rows, i64 n,
                            i64 d, i64 ld, float* out) {
  for (i64 c0 = 0; c0 < d; c0 += 32) {
    const i64 width = d - c0;  // columns left; > 0
    const __m256i t0 = tail_mask(width), t1 = tail_mask(width - 8), t2 = tail_mask(width - 16),
                  t3 = tail_mask(width - 24);
    __m256 a0 = load_tail(out + c0, t0), a1 = load_tail(out + c0 + 8, t1);
    __m256 a2 = load_tail(out + c0 + 16, t2), a3 = load_tail(out + c0 + 24, t3);
    for (i64 j = 0; j < n; ++j) {
      if (!mask[j]) continue;
      const __m256 wj = _mm256_set1_ps(w[j]);
      const float* r = rows + j * ld + c0;
      a0 = _mm256_add_ps(a0, _mm256_mul_ps(wj, load_tail(r, t0)));
      if (width <= 8) continue;
      a1 = _mm256_add_ps(a1, _mm256_mul_ps(wj, load_tail(r + 8, t1)));
      if (width <= 16) continue;
      a2 = _mm256_add_ps(a2, _mm256_mul_ps(wj, load_tail(r + 16, t2)));
      if (width <= 24) continue;
      a3 = _mm256_add_ps(a3, _mm256_mul_ps(wj, load_tail(r + 24, t3)));
    }
    store_tail(out + c0, t0, a0);
    store_tail(out + c0 + 8, t1, a1);
    store_tail(out + c0 + 16, t2, a2);
    store_tail(out + c0 + 24, t3, a3);
  }
}

void row_abs_sums(const float* m, i64 rows, i64 cols, i64 ld, float* out) {
  for (i64 i = 0; i < rows; ++i) out[i] = abs_sum(m + i * ld, cols);
}

void row_quadratic_forms(const float* x, i64 rows, i64 d, const float* G, float* out) {
  alignas(32) float stack_t[256];
  std::vector<float> heap_t(d > 256 ? static_cast<std::size_t>(d) : 0);
  float* t = d > 256 ? heap_t.data() : stack_t;
  for (i64 i = 0; i < rows; ++i) {
    const float* xi = x + i * d;
    for (i64 b = 0; b < d; ++b) t[b] = 0.f;
    for (i64 a = 0; a < d; ++a) {
      const __m256 xa = _mm256_set1_ps(xi[a]);
      const float* g = G + a * d;
      i64 b = 0;
      for (; b + 8 <= d; b += 8)  // plain loads and stores: masked stores are slow on AMD
        _mm256_storeu_ps(t + b, _mm256_fmadd_ps(xa, _mm256_loadu_ps(g + b), _mm256_loadu_ps(t + b)));
      if (b < d) {
        const __m256i k = tail_mask(d - b);
        store_tail(t + b, k, _mm256_fmadd_ps(xa, load_tail(g + b, k), load_tail(t + b, k)));
      }
    }
    out[i] = dot(t, xi, d);
  }
}

}  // namespace kvsim::kernels::avx2
