#pragma once
// One layer's tensors, widened to float32, row-major, exactly the shapes of trace format (v1 or v2).
#include "core/types.h"

namespace kvsim {

struct LayerData {
  int layer = -1;
  int num_heads = 0, num_kv_heads = 0, head_dim = 0, hidden_size = 0;
  i64 num_q = 0;    // rows of q/o actually loaded (all of /q_pos unless a subset was requested)
  i64 seq_len = 0;  // S

  avec<float> q;       // [num_heads][num_q][head_dim]
  avec<float> k;       // [num_kv_heads][seq_len][head_dim]
  avec<float> v;       // [num_kv_heads][seq_len][head_dim]
  avec<float> o_proj;  // [hidden_size][num_heads*head_dim] (HF out x in); empty if absent
  avec<float> o;       // [num_heads][num_q][head_dim]; empty if absent or not requested

  const float* q_row(int h, i64 row) const { return q.data() + (h * num_q + row) * head_dim; }
  const float* k_row(int g, i64 pos) const { return k.data() + (g * seq_len + pos) * head_dim; }
  const float* v_row(int g, i64 pos) const { return v.data() + (g * seq_len + pos) * head_dim; }
  const float* k_head(int g) const { return k.data() + g * seq_len * head_dim; }
  const float* v_head(int g) const { return v.data() + g * seq_len * head_dim; }
  bool has_o_proj() const { return !o_proj.empty(); }
  std::size_t bytes() const {
    return (q.size() + k.size() + v.size() + o_proj.size() + o.size()) * sizeof(float);
  }
};

}  // namespace kvsim
