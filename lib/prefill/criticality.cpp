#include "prefill/criticality.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "kernels/kernels.h"

namespace kvsim::prefill {

CriticalityMap::CriticalityMap(int kv_heads, i64 segments, i64 blocks)
    : num_kv_heads(kv_heads), num_segments(segments), num_blocks(blocks),
      p(static_cast<std::size_t>(kv_heads * segments * blocks), 0.0f) {}

namespace {

// Element-wise max and min over `count` rows of length d starting at `first`.
void row_extremes(const float* first, i64 count, int d, float* hi, float* lo) {
  std::copy(first, first + d, hi);
  std::copy(first, first + d, lo);
  for (i64 t = 1; t < count; ++t) {
    const float* row = first + t * d;
    for (int c = 0; c < d; ++c) {
      hi[c] = std::max(hi[c], row[c]);
      lo[c] = std::min(lo[c], row[c]);
    }
  }
}

struct KeyExtremes {
  avec<float> hi, lo;  // [num_blocks][d]
};

KeyExtremes key_extremes(const HeadsView& x, int g, i64 blocks, i64 bs) {
  const int d = x.head_dim;
  KeyExtremes e{avec<float>(static_cast<std::size_t>(blocks * d)), avec<float>(static_cast<std::size_t>(blocks * d))};
  for (i64 b = 0; b < blocks; ++b) row_extremes(x.k_row(g, b * bs), bs, d, &e.hi[b * d], &e.lo[b * d]);
  return e;
}

// C(s, b) = max(mid_s . k+_b, mid_s . k-_b), mid_s = (q+_s + q-_s) / 2, for one query head.
avec<float> criticality_of_head(const HeadsView& x, const SegmentPlan& plan, int h, const KeyExtremes& keys) {
  const int d = x.head_dim;
  const i64 P = plan.num_profiled(), S = plan.config().segment, NB = P * plan.config().blocks_per_segment();
  avec<float> mid(static_cast<std::size_t>(P * d)), hi(d), lo(d);
  for (i64 s = 0; s < P; ++s) {
    row_extremes(x.q_row(h, s * S), S, d, hi.data(), lo.data());
    for (int c = 0; c < d; ++c) mid[s * d + c] = 0.5f * (hi[c] + lo[c]);
  }
  avec<float> c_hi(static_cast<std::size_t>(P * NB)), c_lo(static_cast<std::size_t>(P * NB));
  if (P == 0 || NB == 0) return c_hi;
  kernels::sgemm(false, true, P, NB, d, 1.0f, mid.data(), d, keys.hi.data(), d, 0.0f, c_hi.data(), NB);
  kernels::sgemm(false, true, P, NB, d, 1.0f, mid.data(), d, keys.lo.data(), d, 0.0f, c_lo.data(), NB);
  for (std::size_t i = 0; i < c_hi.size(); ++i) c_hi[i] = std::max(c_hi[i], c_lo[i]);
  return c_hi;
}

}  // namespace

avec<float> head_criticality(const HeadsView& x, const SegmentPlan& plan, int h) {
  const i64 NB = plan.num_profiled() * plan.config().blocks_per_segment();
  return criticality_of_head(x, plan, h, key_extremes(x, x.kv_head_of(h), NB, plan.config().block));
}

CriticalityMap estimate_criticality(const HeadsView& x, const SegmentPlan& plan) {
  if (x.n != plan.n()) fail("prefill", "estimate", "view and plan disagree on n");
  const i64 P = plan.num_profiled(), r = plan.config().blocks_per_segment(), NB = P * r;
  const int G = x.group_size();
  CriticalityMap map(x.num_kv_heads, P, NB);
  if (P == 0) return map;
#pragma omp parallel for schedule(dynamic, 1)
  for (int g = 0; g < x.num_kv_heads; ++g) {
    const KeyExtremes keys = key_extremes(x, g, NB, plan.config().block);
    float* acc = map.row(g, 0);
    for (int hh = 0; hh < G; ++hh) {
      const avec<float> c = criticality_of_head(x, plan, g * G + hh, keys);
      for (i64 i = 0; i < P * NB; ++i) acc[i] += c[static_cast<std::size_t>(i)] / static_cast<float>(G);
    }
    // Causal restriction (blocks entirely before the segment start) and softmax over blocks.
    for (i64 s = 0; s < P; ++s) {
      float* row = map.row(g, s);
      const i64 eligible = s * r;
      if (eligible > 0) kernels::softmax_inplace(row, eligible);
      std::fill(row + eligible, row + NB, 0.0f);
    }
  }
  return map;
}

CriticalityMap fuse_maps(const CriticalityMap& previous, const CriticalityMap& current) {
  if (previous.p.size() != current.p.size() || previous.num_blocks != current.num_blocks)
    fail("prefill", "fusion", "criticality maps of different shapes");
  CriticalityMap out = current;
  for (std::size_t i = 0; i < out.p.size(); ++i) out.p[i] = 0.25f * previous.p[i] + 0.75f * current.p[i];
  return out;
}

CriticalityMap LayerFusion::apply(int layer, const CriticalityMap& current) {
  const bool fuse = layer >= 2 && have_ && stored_layer_ == layer - 1;
  stored_ = fuse ? fuse_maps(stored_, current) : current;
  have_ = true;
  stored_layer_ = layer;
  return stored_;
}

BlockSelection select_blocks(const SegmentPlan& plan, const CriticalityMap& map) {
  BlockSelection sel = BlockSelection::dense(plan, map.num_kv_heads);
  const i64 K = plan.config().top_k();
  std::vector<i64> idx;
  for (int g = 0; g < map.num_kv_heads; ++g)
    for (i64 s = 0; s < plan.num_segments(); ++s) {
      const SegmentInfo& seg = plan.segment(s);
      if (seg.dense) continue;
      idx.resize(static_cast<std::size_t>(seg.kept_blocks));
      const i64 got = kernels::topk(map.row(g, s), seg.eligible_blocks, K, idx.data());
      sel.set_blocks(g, s, std::vector<std::int32_t>(idx.begin(), idx.begin() + got));
    }
  return sel;
}

}  // namespace kvsim::prefill
