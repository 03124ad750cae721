#include "attention/value_norms.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace kvsim {

namespace {
constexpr i64 kRowBlock = 256;
}  // namespace

void projected_l1_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out) {
  if (!Wt) {
    kernels::row_abs_sums(v, rows, d, d, out);
    return;
  }
  avec<float> packed(static_cast<std::size_t>(kernels::panel_count(D) * d * kernels::kPanel));
  kernels::pack_panels(Wt, ld, d, D, packed.data());
  projected_l1_norms_packed(v, rows, d, packed.data(), D, out);
}

void projected_l1_norms_packed(const float* v, i64 rows, int d, const float* panels, int D, float* out) {
  // Fused x W and |.| sums over packed column panels: the rows x D product never reaches memory.
  // A row block (kRowBlock x d, 128 KiB at d = 128) stays in L2 while every panel of W passes.
  const i64 P = kernels::panel_count(D);
  std::fill(out, out + rows, 0.f);
  for (i64 r0 = 0; r0 < rows; r0 += kRowBlock) {
    const i64 mr = std::min(kRowBlock, rows - r0);
    for (i64 p = 0; p < P; ++p)
      kernels::project_panel(v + r0 * d, mr, d, panels + p * d * kernels::kPanel, out + r0, nullptr, nullptr);
  }
}

void projected_l2_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out) {
  if (!Wt) {
    for (i64 i = 0; i < rows; ++i) out[i] = std::sqrt(kernels::dot(v + i * d, v + i * d, d));
    return;
  }
  // G = W W^T = Wt^T Wt (d x d), Wt viewed as [D x d] with ld, summed over e in order with the
  // bit-exact axpy: not sgemm, whose bits depend on how many threads OpenBLAS uses (it runs
  // single-threaded inside OpenMP regions), so the norms and the cache's kernel fingerprint are
  // the same wherever they are computed (a rule inside a parallel region, the bounds outside).
  avec<float> gram(static_cast<std::size_t>(d) * d);
  std::fill(gram.begin(), gram.end(), 0.f);
  for (i64 e = 0; e < D; ++e) {
    const float* w = Wt + e * ld;
    for (int a = 0; a < d; ++a) kernels::axpy(w[a], w, gram.data() + static_cast<i64>(a) * d, d);
  }
  kernels::row_quadratic_forms(v, rows, d, gram.data(), out);
  for (i64 i = 0; i < rows; ++i) out[i] = std::sqrt(std::max(0.f, out[i]));
}

void projected_upper_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out) {
  if (!Wt) {
    kernels::row_abs_sums(v, rows, d, d, out);
    return;
  }
  std::vector<float> wrow(d, 0.f);  // wrow[c] = sum_e |W_ce|
  for (i64 e = 0; e < D; ++e)
    for (int c = 0; c < d; ++c) wrow[c] += std::fabs(Wt[e * ld + c]);
  std::vector<float> absv(d);
  for (i64 i = 0; i < rows; ++i) {
    for (int c = 0; c < d; ++c) absv[c] = std::fabs(v[i * d + c]);
    out[i] = kernels::dot(absv.data(), wrow.data(), d);
  }
}

}  // namespace kvsim
