#pragma once
// kvsim.select: any kvsim rule run on plain numpy arrays of one layer (no trace file), e.g. on a
// KV cache that changes as a model runs (the closed loop's true block-wise KeyDiff and decode-time
// eviction). Positions are the array rows: keys/values [num_kv_heads, T, head_dim] at positions
// 0..T-1, queries [num_heads, len(q_pos), head_dim] at q_pos; tokens [0, n_c) are compressible.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>

#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim::python {

// One layer given as arrays (the shapes above; v, q, q_pos, o_proj may be None): its metadata and
// tensors, every position a context token. Throws kvsim::Error naming the array.
struct ArraysLayer {
  TraceMeta meta;
  std::shared_ptr<LayerData> data;
};
ArraysLayer arrays_layer(const pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>& k,
                         pybind11::object v, pybind11::object q, pybind11::object q_pos, pybind11::object o_proj,
                         double attn_scale, long long num_heads);

void bind_select(pybind11::module_& m);

}  // namespace kvsim::python
