#pragma once
// kvsim.select: any kvsim rule run on plain numpy arrays of one layer (no trace file), e.g. on a
// KV cache that changes as a model runs (the closed loop's true block-wise KeyDiff and decode-time
// eviction). Positions are the array rows: keys/values [num_kv_heads, T, head_dim] at positions
// 0..T-1, queries [num_heads, len(q_pos), head_dim] at q_pos; tokens [0, n_c) are compressible.
#include <pybind11/pybind11.h>

namespace kvsim::python {

void bind_select(pybind11::module_& m);

}  // namespace kvsim::python
