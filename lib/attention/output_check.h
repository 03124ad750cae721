#pragma once
// The free check a trace carries: kvsim's own full attention (LayerCache, the engine every replay
// uses) of each stored query, compared with the model's attention output /layers/<l>/o.
// A trace whose `o` is reproduced is one whose attention kvsim replays faithfully.
#include "core/types.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

struct OutputCheck {
  int layer = 0;
  i64 n_queries = 0;
  double max_abs_err = 0;  // max over heads, queries, components of |o_kvsim - o_model|
  double max_abs_o = 0;    // max |o_model|: the scale the error compares against
  double max_rel_err = 0;  // max over (head, query) of ||o_kvsim - o_model||_2 / ||o_model||_2
};

// data must hold every stored query row and o (LayerRequest o = true). Queries are processed in
// blocks, so memory stays at heads x block x seq_len floats.
OutputCheck check_attention_output(const TraceMeta& meta, const LayerData& data);

}  // namespace kvsim
