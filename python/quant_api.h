#pragma once
// kvsim.quantize: the KV quantization kvsim replays (quant/kv_quant.h), on numpy rows, so the
// closed loop stores the same codes and the numpy reference test can compare them.
#include <pybind11/pybind11.h>

namespace kvsim::python {
void bind_quant(pybind11::module_& m);
}
