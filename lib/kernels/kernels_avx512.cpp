// PLACEHOLDER (to be replaced by real AVX-512 kernels): forwards to the scalar reference.
#include "kernels/kernels.h"

namespace kvsim::kernels::avx512 {

void widen_f16(const std::uint16_t* in, float* out, i64 n) { scalar::widen_f16(in, out, n); }
void widen_bf16(const std::uint16_t* in, float* out, i64 n) { scalar::widen_bf16(in, out, n); }
i64 count_nonfinite(const float* x, i64 n) { return scalar::count_nonfinite(x, n); }
float softmax_inplace(float* x, i64 n) { return scalar::softmax_inplace(x, n); }
float scaled_softmax_inplace(float* x, i64 n, float s) { return scalar::scaled_softmax_inplace(x, n, s); }
float sum(const float* x, i64 n) { return scalar::sum(x, n); }
float masked_sum(const float* x, const std::uint8_t* m, i64 n) { return scalar::masked_sum(x, m, n); }
float dot(const float* a, const float* b, i64 n) { return scalar::dot(a, b, n); }
float abs_sum(const float* x, i64 n) { return scalar::abs_sum(x, n); }
float max_value(const float* x, i64 n) { return scalar::max_value(x, n); }
void masked_weighted_rowsum(const float* w, const std::uint8_t* m, const float* r, i64 n, i64 d, i64 ld,
                            float* out) { scalar::masked_weighted_rowsum(w, m, r, n, d, ld, out); }
void row_abs_sums(const float* m, i64 r, i64 c, i64 ld, float* out) { scalar::row_abs_sums(m, r, c, ld, out); }
void row_quadratic_forms(const float* x, i64 r, i64 d, const float* G, float* out) {
  scalar::row_quadratic_forms(x, r, d, G, out);
}
void avg_pool1d(const float* x, i64 n, int k, float* out) { scalar::avg_pool1d(x, n, k, out); }
void max_pool1d(const float* x, i64 n, int k, float* out) { scalar::max_pool1d(x, n, k, out); }
void group_reduce(const float* x, int g, i64 n, i64 ld, GroupOp op, float* out) {
  scalar::group_reduce(x, g, n, ld, op, out);
}

}  // namespace kvsim::kernels::avx512
