#include "attention/value_norms.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace kvsim {

namespace {
constexpr i64 kRowBlock = 256;
constexpr i64 kColBlock = 512;
}  // namespace

void projected_l1_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out) {
  if (!Wt) {
    kernels::row_abs_sums(v, rows, d, d, out);
    return;
  }
  avec<float> tmp(static_cast<std::size_t>(kRowBlock * kColBlock));
  std::vector<float> part(kRowBlock);
  for (i64 r0 = 0; r0 < rows; r0 += kRowBlock) {
    const i64 mr = std::min(kRowBlock, rows - r0);
    std::fill(out + r0, out + r0 + mr, 0.f);
    for (i64 c0 = 0; c0 < D; c0 += kColBlock) {
      const i64 nc = std::min<i64>(kColBlock, D - c0);
      // tmp[mr x nc] = V[r0.., :] x W[:, c0..] ; W[:, c0..] = (Wt rows c0..)^T
      kernels::sgemm(false, true, mr, nc, d, 1.f, v + r0 * d, d, Wt + c0 * ld, ld, 0.f, tmp.data(), nc);
      kernels::row_abs_sums(tmp.data(), mr, nc, nc, part.data());
      for (i64 i = 0; i < mr; ++i) out[r0 + i] += part[i];
    }
  }
}

void projected_l2_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out) {
  if (!Wt) {
    for (i64 i = 0; i < rows; ++i) out[i] = std::sqrt(kernels::dot(v + i * d, v + i * d, d));
    return;
  }
  avec<float> gram(static_cast<std::size_t>(d) * d);
  // G = W W^T = Wt^T Wt (d x d), Wt viewed as [D x d] with ld.
  kernels::sgemm(true, false, d, d, D, 1.f, Wt, ld, Wt, ld, 0.f, gram.data(), d);
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
