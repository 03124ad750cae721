#pragma once
// kvsim.decode_masks: the per-query caches of one rule, budget and trace layer under the decode
// protocol (replay/decode_protocol.h, rules doc 1.9), for inspection and the DecodingPress parity.
#include <pybind11/pybind11.h>

namespace kvsim::python {

void bind_decode(pybind11::module_& m);

}  // namespace kvsim::python
