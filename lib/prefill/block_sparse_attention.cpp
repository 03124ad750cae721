// Dispatch and the scalar reference of block-sparse causal attention.
#include "prefill/block_sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/isa.h"

namespace kvsim::prefill {

namespace {
void check_shapes(const HeadsView& x, const BlockSelection& sel) {
  if (x.n != sel.plan().n()) fail("prefill", "attention", "view and selection disagree on n");
  if (x.num_kv_heads != sel.num_kv_heads()) fail("prefill", "attention", "KV head count mismatch");
  if (x.num_kv_heads <= 0 || x.num_heads % x.num_kv_heads != 0)
    fail("prefill", "attention", "num_heads must be a multiple of num_kv_heads");
}
}  // namespace

bool avx512_attention_supported(const HeadsView& x, const SegmentPlan& plan) {
  return x.head_dim % 16 == 0 && plan.config().block % 16 == 0;
}

bool avx2_attention_supported(const HeadsView& x, const SegmentPlan& plan) {
  return x.head_dim % 8 == 0 && plan.config().block % 8 == 0;
}

void block_sparse_attention(const HeadsView& x, const BlockSelection& sel, float* out) {
  check_shapes(x, sel);
  const kernels::Isa isa = kernels::active_isa();
  if (isa == kernels::Isa::avx512 && avx512_attention_supported(x, sel.plan()))
    avx512::block_sparse_attention(x, sel, out);
  else if (isa != kernels::Isa::scalar && avx2_attention_supported(x, sel.plan()))
    avx2::block_sparse_attention(x, sel, out);  // AVX-512 machines too, for head_dim 8, 24, ...
  else
    scalar::block_sparse_attention(x, sel, out);
}

namespace scalar {

void block_sparse_attention(const HeadsView& x, const BlockSelection& sel, float* out) {
  check_shapes(x, sel);
  const SegmentPlan& plan = sel.plan();
  const i64 n = x.n, bs = plan.config().block;
  const int d = x.head_dim;
#pragma omp parallel
  {
    std::vector<i64> keys;
    std::vector<double> w, acc(static_cast<std::size_t>(d));
#pragma omp for schedule(dynamic, 16) collapse(2)
    for (int h = 0; h < x.num_heads; ++h)
      for (i64 t = 0; t < n; ++t) {
        const int g = x.kv_head_of(h);
        const i64 s = plan.segment_of(t);
        keys.clear();
        for (std::int32_t b : sel.blocks(g, s))
          for (i64 j = 0; j < bs; ++j) keys.push_back(b * bs + j);
        for (i64 j = plan.segment(s).start; j <= t; ++j) keys.push_back(j);
        const float* q = x.q_row(h, t);
        w.resize(keys.size());
        double mx = -INFINITY;
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const float* k = x.k_row(g, keys[i]);
          float dot = 0;
          for (int c = 0; c < d; ++c) dot += q[c] * k[c];
          w[i] = static_cast<double>(x.scale * dot);
          mx = std::max(mx, w[i]);
        }
        double total = 0;
        std::fill(acc.begin(), acc.end(), 0.0);
        for (std::size_t i = 0; i < keys.size(); ++i) {
          const double p = std::exp(w[i] - mx);
          total += p;
          const float* v = x.v_row(g, keys[i]);
          for (int c = 0; c < d; ++c) acc[c] += p * v[c];
        }
        float* o = out + (h * n + t) * d;
        for (int c = 0; c < d; ++c) o[c] = static_cast<float>(acc[c] / total);
      }
  }
}

}  // namespace scalar
}  // namespace kvsim::prefill
