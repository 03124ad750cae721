#pragma once
// Projected value norms nu_j = ||v_j W||, W = W_o^h in R^{d x D}, for a block of value rows.
// W is passed as the HF o_proj slice: Wt points at column h*d of the [D][H*d] matrix, ld = H*d,
// so W[c][e] = Wt[e * ld + c]. Wt == nullptr means W = identity (nu = ||v||).
#include "core/types.h"

namespace kvsim {

// Exact L1: kernels::project_panel over W packed in column panels (fused product and |.| sums,
// no rows x D temporary). Deterministic: fixed block and panel order.
void projected_l1_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out);
// The same with W already packed by kernels::pack_panels (LayerCache keeps W_o^h packed per layer).
void projected_l1_norms_packed(const float* v, i64 rows, int d, const float* panels, int D, float* out);
// Exact L2 via the d x d Gram matrix G = W W^T: nu_j = sqrt(v_j^T G v_j).
void projected_l2_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out);
// Cheap upper bound of the L1 norm: sum_c |v_c| * sum_e |W_ce| (>= exact L1, equal without W).
void projected_upper_norms(const float* v, i64 rows, int d, const float* Wt, i64 ld, int D, float* out);

}  // namespace kvsim
