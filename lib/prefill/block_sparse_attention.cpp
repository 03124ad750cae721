// Dispatch and the scalar reference of block-sparse causal attention.
#include "prefill/block_sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "kernels/isa.h"
#include "prefill/block_sparse_tiles.h"

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

namespace tiles {

avec<float> transpose_key_blocks(const HeadsView& x, const SegmentPlan& plan) {
  const i64 n = x.n, d = x.head_dim, bs = plan.config().block, nb = plan.num_blocks();
  const int Hkv = x.num_kv_heads;
  avec<float> kt(static_cast<std::size_t>(Hkv * nb * d * bs), 0.0f);
#pragma omp parallel for collapse(2) schedule(static)
  for (int g = 0; g < Hkv; ++g)
    for (i64 b = 0; b < nb; ++b) {
      float* dst = kt.data() + (g * nb + b) * d * bs;
      const i64 valid = std::min(bs, n - b * bs);
      for (i64 j = 0; j < valid; ++j) {
        const float* k = x.k_row(g, b * bs + j);
        for (i64 c = 0; c < d; ++c) dst[c * bs + j] = k[c];
      }
    }
  return kt;
}

std::vector<WorkItem> work_items(const HeadsView& x, const SegmentPlan& plan, i64 tile) {
  std::vector<WorkItem> items;
  for (i64 s = plan.num_segments() - 1; s >= 0; --s)
    for (int g = 0; g < x.num_kv_heads; ++g)
      for (i64 t0 = plan.segment(s).start; t0 < plan.segment(s).end; t0 += tile) items.push_back({g, s, t0});
  return items;
}

void load_query_tile(const HeadsView& x, int g, i64 t0, i64 tile, float* qs) {
  const int G = x.group_size();
  const i64 d = x.head_dim;
  for (int hh = 0; hh < G; ++hh)
    for (i64 i = 0; i < tile; ++i) {
      float* dst = qs + (hh * tile + i) * d;
      if (t0 + i < x.n) {
        const float* q = x.q_row(g * G + hh, t0 + i);
        for (i64 c = 0; c < d; ++c) dst[c] = x.scale * q[c];
      } else {
        std::fill(dst, dst + d, 0.0f);
      }
    }
}

void mask_block(float* lg, i64 rows, i64 bs, i64 t0, i64 tile, i64 key0, i64 n) {
  for (i64 r = 0; r < rows; ++r) {
    const i64 t = t0 + r % tile;
    float* row = lg + r * bs;
    for (i64 j = 0; j < bs; ++j)
      if (key0 + j > t || key0 + j >= n) row[j] = -INFINITY;
  }
}

void store_output_tile(const HeadsView& x, int g, i64 t0, i64 tile, const float* o, const float* l, float* out) {
  const int G = x.group_size();
  const i64 d = x.head_dim, n = x.n;
  for (int hh = 0; hh < G; ++hh)
    for (i64 i = 0; i < tile && t0 + i < n; ++i) {
      const i64 r = hh * tile + i;
      const float inv = 1.0f / l[r];
      float* dst = out + ((g * G + hh) * n + t0 + i) * d;
      for (i64 c = 0; c < d; ++c) dst[c] = o[r * d + c] * inv;
    }
}

}  // namespace tiles
}  // namespace kvsim::prefill
