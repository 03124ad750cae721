#pragma once
// A non-owning view of one layer's prompt queries, keys and values for all heads: what the
// CritiPrefill estimator, the attention kernels and the simulation read. Rows are head_dim
// floats; query row t is the query of position t (so every prompt position must be present).
#include "core/types.h"

namespace kvsim::prefill {

struct HeadsView {
  int num_heads = 0, num_kv_heads = 0, head_dim = 0;
  i64 n = 0;                  // prompt positions 0 .. n-1
  const float* q = nullptr;   // [num_heads][q_head_stride / head_dim rows][head_dim]
  i64 q_head_stride = 0;      // floats between heads of q
  const float* k = nullptr;   // [num_kv_heads][kv_head_stride / head_dim rows][head_dim]
  const float* v = nullptr;
  i64 kv_head_stride = 0;
  float scale = 1.0f;         // logit scale (attn_scale)

  int group_size() const { return num_heads / num_kv_heads; }
  int kv_head_of(int h) const { return h / group_size(); }  // HF repeat_kv order
  const float* q_row(int h, i64 t) const { return q + h * q_head_stride + t * head_dim; }
  const float* k_row(int g, i64 p) const { return k + g * kv_head_stride + p * head_dim; }
  const float* v_row(int g, i64 p) const { return v + g * kv_head_stride + p * head_dim; }
};

}  // namespace kvsim::prefill
