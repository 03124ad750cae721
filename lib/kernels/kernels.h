#pragma once
// The numeric kernels of kvsim. Each function dispatches at run time (isa.h) to an AVX-512
// version (kernels/*_avx512.cpp), an AVX2 + FMA version (kernels/*_avx2.cpp) or the scalar
// reference (kernels/*_scalar.cpp), which always exists and is what the tests compare against.
// Each set is also callable directly: kvsim::kernels::scalar, ::avx2, ::avx512.
#include <cstdint>

#include "core/types.h"

namespace kvsim::kernels {

enum class GroupOp { mean, max, sum };

#define KVSIM_KERNEL_DECLS                                                                    \
  /* IEEE binary16 / bfloat16 -> float32. */                                                 \
  void widen_f16(const std::uint16_t* in, float* out, i64 n);                                \
  void widen_bf16(const std::uint16_t* in, float* out, i64 n);                               \
  /* Count of non-finite values (NaN/Inf). */                                                 \
  i64 count_nonfinite(const float* x, i64 n);                                                 \
  /* Stable softmax in place: x <- exp(x - max) / sum. Returns log-sum-exp. n >= 1. -inf     \
     entries get weight exactly 0; all entries -inf, or any NaN, gives NaN everywhere. */      \
  float softmax_inplace(float* x, i64 n);                                                     \
  /* Scale then softmax: x <- softmax(scale * x). Returns log-sum-exp of the scaled values. */ \
  float scaled_softmax_inplace(float* x, i64 n, float scale);                                 \
  float sum(const float* x, i64 n);                                                           \
  /* sum_j x_j * [mask_j != 0] */                                                             \
  float masked_sum(const float* x, const std::uint8_t* mask, i64 n);                          \
  float dot(const float* a, const float* b, i64 n);                                           \
  float abs_sum(const float* x, i64 n);                                                       \
  float max_value(const float* x, i64 n);                                                     \
  /* out[c] += sum_j w[j] * [mask_j] * rows[j*ld + c], c < d (weighted gather over a kept set). */ \
  void masked_weighted_rowsum(const float* w, const std::uint8_t* mask, const float* rows,   \
                              i64 n, i64 d, i64 ld, float* out);                              \
  /* out[i] = sum_c |m[i*ld + c]| for i < rows, c < cols (row L1 norms). */                   \
  void row_abs_sums(const float* m, i64 rows, i64 cols, i64 ld, float* out);                  \
  /* out[i] = x_i^T G x_i for rows x_i of length d (G is d x d, row-major). */                \
  void row_quadratic_forms(const float* x, i64 rows, i64 d, const float* G, float* out);      \
  /* 1-D pooling, odd kernel k, output length n. avg: zero padding, divides by k (PyTorch     \
     count_include_pad). max: padding is -inf (in-range part only). */                        \
  void avg_pool1d(const float* x, i64 n, int k, float* out);                                  \
  void max_pool1d(const float* x, i64 n, int k, float* out);                                  \
  /* Reduce g rows of length n (row stride ld) element-wise into out[n]. */                   \
  void group_reduce(const float* x, int g, i64 n, i64 ld, GroupOp op, float* out);           \
  /* y[i] += a * x[i] (multiply, then add: no FMA, so every ISA gives the same bits). */      \
  void axpy(float a, const float* x, float* y, i64 n);                                        \
  /* x[i] *= a */                                                                             \
  void scale(float* x, i64 n, float a);                                                       \
  /* One pass over a row split by a mask: out = {sum a[m], sum a[!m], sum a*nu[m],            \
     sum a*nu[!m]} (m_j = mask_j != 0): kept and evicted masses and nu-weighted masses. */    \
  void split_mass_sums(const float* a, const float* nu, const std::uint8_t* mask, i64 n,     \
                       float out[4]);                                                         \
  /* Stream compaction: writes x[j] for mask_j != 0, in order, to out; returns the count.    \
     Writes nothing past out[count - 1]. */                                                   \
  i64 compress_masked(const float* x, const std::uint8_t* mask, i64 n, float* out);           \
  /* Rows times one packed panel of a d x D matrix (pack_panels): p_i = x_i W[:, panel]      \
     (kPanel columns, padding columns are zero). Accumulates l1[i] += sum |p_i|; when not     \
     null, sq[i] += sum p_i^2 and y[i * kPanel + e] += p_ie. x: n rows of length d. */        \
  void project_panel(const float* x, i64 n, i64 d, const float* panel, float* l1, float* sq, \
                     float* y);                                                               \
  /* KV quantization (rules doc 2.33), every step in float64 so that each ISA and the numpy  \
     reference give the same bits. Per group i of g consecutive values: min and max. */       \
  void group_min_max(const float* x, i64 groups, i64 g, float* mn, float* mx);               \
  /* Affine codes of group i: q = clamp(rint((x - zero_i) / scale_i), lo, hi) (rint: half to  \
     even), xhat = float32(q * scale_i + zero_i). scale_i > 0. */                             \
  void quant_affine(const float* x, i64 groups, i64 g, const double* scale, const double* zero, \
                    int lo, int hi, std::int16_t* codes, float* xhat);                        \
  /* Round to a minifloat with `mant` mantissa bits, smallest normal exponent min_exp (below  \
     it the subnormal step 2^(min_exp - mant)), half to even, saturating at +-max (OCP FP8). */ \
  void quant_minifloat(const float* x, i64 n, int mant, int min_exp, double max, float* xhat);

KVSIM_KERNEL_DECLS

namespace scalar {
KVSIM_KERNEL_DECLS
}
namespace avx2 {
KVSIM_KERNEL_DECLS
}
namespace avx512 {
KVSIM_KERNEL_DECLS
}

// Column panels of the projection kernels: W (d x D) as ceil(D / kPanel) blocks [d][kPanel],
// zero-padded, so a panel is contiguous (no 4 KiB-aliasing strides) and fits L1.
constexpr i64 kPanel = 64;
inline i64 panel_count(i64 D) { return (D + kPanel - 1) / kPanel; }
// Packs W[c][e] = Wt[e * ld + c] (Wt: the [D][ld] HF o_proj, offset to a head's first column;
// nullptr: identity, D == d) into out[panel_count(D) * d * kPanel].
void pack_panels(const float* Wt, i64 ld, i64 d, i64 D, float* out);

// Top-k with deterministic ties: larger score first, lower index wins a tie (-0 and +0 tie).
// NaN never selected. Writes k indices to idx ordered by rank; returns the number written
// (min(k, number of non-NaN scores)). O(n) selection (topk.cpp), identical output to
// scalar::topk, the std::partial_sort reference that defines the order.
i64 topk(const float* score, i64 n, i64 k, i64* idx);
// Same set as topk, but sets mask[j] = 1 for the selected j (mask is not cleared first);
// skips ordering the selection, so it is O(n) for every k.
void topk_mask(const float* score, i64 n, i64 k, std::uint8_t* mask);
namespace scalar {
i64 topk(const float* score, i64 n, i64 k, i64* idx);
}

// Error bounds vs the scalar reference, the same for the AVX2 and AVX-512 sets (tests/kernels
// check both): bit-exact: widen_f16/bf16
// (a signalling f16 NaN comes out quiet), count_nonfinite, max_value, masked_weighted_rowsum,
// avg/max_pool1d, group_reduce, axpy, scale, topk. Reassociated float32 sums (several
// accumulators, FMA): sum, masked_sum, dot, abs_sum, row_abs_sums, row_quadratic_forms, within
// a few eps * sum|terms|. softmax: vector exp within ~1 ulp plus the reassociated sum, so a few
// ulp per output.

// The attention logit transform of a model: logit = scale * q.k, then, with softcap c > 0,
// c * tanh(logit / c) (Gemma 2's attention soft-capping; trace format v2).
struct LogitSpec {
  float scale = 1.0f;
  float softcap = 0.0f;  // 0 = none
};
// x <- c * tanh(x / c) in place, in float32 as transformers does; -inf (a masked logit) stays
// -inf. Scalar everywhere: only soft-capped traces pay for it.
void softcap_inplace(float* x, i64 n, float c);
// x <- softmax(transform(x)) over n entries; returns the log-sum-exp of the transformed logits.
// Without soft-capping this is exactly scaled_softmax_inplace(x, n, spec.scale).
float logit_softmax_inplace(float* x, i64 n, const LogitSpec& spec);

// Row-major single-precision GEMM via OpenBLAS: C[m x n] = alpha * op(A) op(B) + beta * C.
void sgemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, float alpha, const float* A, i64 lda,
           const float* B, i64 ldb, float beta, float* C, i64 ldc);
// The same in double precision (analysis paths that must not lose digits, e.g. oracle_greedy).
void dgemm(bool trans_a, bool trans_b, i64 m, i64 n, i64 k, double alpha, const double* A, i64 lda,
           const double* B, i64 ldb, double beta, double* C, i64 ldc);

}  // namespace kvsim::kernels
