// Run-time dispatch of every kernel to its AVX-512, AVX2 or scalar implementation (topk and
// topk_mask are ISA-independent: topk.cpp).

#include <cblas.h>

#include "kernels/isa.h"
#include "kernels/kernels.h"

namespace kvsim::kernels {

#define KVSIM_DISPATCH(name, ...)                                    \
  (active_isa() == Isa::avx512 ? avx512::name(__VA_ARGS__)             \
   : active_isa() == Isa::avx2 ? avx2::name(__VA_ARGS__) : scalar::name(__VA_ARGS__))

void widen_f16(const std::uint16_t* in, float* out, i64 n) { KVSIM_DISPATCH(widen_f16, in, out, n); }
void widen_bf16(const std::uint16_t* in, float* out, i64 n) { KVSIM_DISPATCH(widen_bf16, in, out, n); }
i64 count_nonfinite(const float* x, i64 n) { return KVSIM_DISPATCH(count_nonfinite, x, n); }
float softmax_inplace(float* x, i64 n) { return KVSIM_DISPATCH(softmax_inplace, x, n); }
float scaled_softmax_inplace(float* x, i64 n, float scale) {
  return KVSIM_DISPATCH(scaled_softmax_inplace, x, n, scale);
}
float sum(const float* x, i64 n) { return KVSIM_DISPATCH(sum, x, n); }
float masked_sum(const float* x, const std::uint8_t* mask, i64 n) {
  return KVSIM_DISPATCH(masked_sum, x, mask, n);
}
float dot(const float* a, const float* b, i64 n) { return KVSIM_DISPATCH(dot, a, b, n); }
float abs_sum(const float* x, i64 n) { return KVSIM_DISPATCH(abs_sum, x, n); }
float max_value(const float* x, i64 n) { return KVSIM_DISPATCH(max_value, x, n); }
void masked_weighted_rowsum(const float* w, const std::uint8_t* mask, const float* rows, i64 n,
                            i64 d, i64 ld, float* out) {
  KVSIM_DISPATCH(masked_weighted_rowsum, w, mask, rows, n, d, ld, out);
}
void row_abs_sums(const float* m, i64 rows, i64 cols, i64 ld, float* out) {
  KVSIM_DISPATCH(row_abs_sums, m, rows, cols, ld, out);
}
void row_quadratic_forms(const float* x, i64 rows, i64 d, const float* G, float* out) {
  KVSIM_DISPATCH(row_quadratic_forms, x, rows, d, G, out);
}
void group_min_max(const float* x, i64 groups, i64 g, float* mn, float* mx) {
  KVSIM_DISPATCH(group_min_max, x, groups, g, mn, mx);
}
void quant_affine(const float* x, i64 groups, i64 g, const double* scale, const double* zero, int lo, int hi,
                  std::int16_t* codes, float* xhat) {
  KVSIM_DISPATCH(quant_affine, x, groups, g, scale, zero, lo, hi, codes, xhat);
}
void quant_minifloat(const float* x, i64 n, int mant, int min_exp, double max, float* xhat) {
  KVSIM_DISPATCH(quant_minifloat, x, n, mant, min_exp, max, xhat);
}
void avg_pool1d(const float* x, i64 n, int k, float* out) { KVSIM_DISPATCH(avg_pool1d, x, n, k, out); }
void max_pool1d(const float* x, i64 n, int k, float* out) { KVSIM_DISPATCH(max_pool1d, x, n, k, out); }
void group_reduce(const float* x, int g, i64 n, i64 ld, GroupOp op, float* out) {
  KVSIM_DISPATCH(group_reduce, x, g, n, ld, op, out);
}

void axpy(float a, const float* x, float* y, i64 n) { KVSIM_DISPATCH(axpy, a, x, y, n); }
void scale(float* x, i64 n, float a) { KVSIM_DISPATCH(scale, x, n, a); }

void split_mass_sums(const float* a, const float* nu, const std::uint8_t* mask, i64 n, float out[4]) {
  KVSIM_DISPATCH(split_mass_sums, a, nu, mask, n, out);
}
i64 compress_masked(const float* x, const std::uint8_t* mask, i64 n, float* out) {
  return KVSIM_DISPATCH(compress_masked, x, mask, n, out);
}
void project_panel(const float* x, i64 n, i64 d, const float* panel, float* l1, float* sq, float* y) {
  KVSIM_DISPATCH(project_panel, x, n, d, panel, l1, sq, y);
}

void pack_panels(const float* Wt, i64 ld, i64 d, i64 D, float* out) {
  const i64 P = panel_count(D);
  for (i64 p = 0; p < P; ++p)
    for (i64 e = 0; e < kPanel; ++e) {  // one column of W = one contiguous row of Wt
      const i64 col = p * kPanel + e;
      float* dst = out + p * d * kPanel + e;
      for (i64 c = 0; c < d; ++c)
        dst[c * kPanel] = col >= D ? 0.f : (Wt ? Wt[col * ld + c] : (col == c ? 1.f : 0.f));
    }
}

void sgemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, float alpha, const float* A, i64 lda,
           const float* B, i64 ldb, float beta, float* C, i64 ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

void dgemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, double alpha, const double* A, i64 lda,
           const double* B, i64 ldb, double beta, double* C, i64 ldc) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              static_cast<blasint>(m), static_cast<blasint>(n), static_cast<blasint>(k), alpha, A,
              static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C, static_cast<blasint>(ldc));
}

}  // namespace kvsim::kernels
