#include "quant_api.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "core/error.h"
#include "quant/kv_quant.h"

namespace kvsim::python {

namespace py = pybind11;

void bind_quant(py::module_& m) {
  using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;
  m.def(
      "quantize",
      [](const F32& rows, int bits, const std::string& axis, const std::string& scheme, long long group,
         long long residual) {
        if (rows.ndim() != 2) fail("kvsim.quantize", "rows", "must be 2-D [tokens, head_dim]");
        if (axis != "channel" && axis != "token") fail("kvsim.quantize", "axis", "must be channel or token");
        QuantSpec spec;
        spec.scheme = parse_quant_scheme(scheme);
        spec.group = group;
        spec.residual = residual;
        if (group < 1) fail("kvsim.quantize", "group", "must be >= 1");
        const QuantAxis ax = axis == "channel" ? QuantAxis::channel : QuantAxis::token;
        const i64 n = rows.shape(0);
        const int d = static_cast<int>(rows.shape(1));
        QuantizedRows r;
        {
          py::gil_scoped_release release;
          r = quantize_rows(rows.data(), n, d, bits, ax, spec, "kvsim.quantize");
        }
        py::array_t<float> xhat({n, static_cast<i64>(d)});
        std::copy(r.xhat.begin(), r.xhat.end(), xhat.mutable_data());
        py::array_t<std::int16_t> codes({r.quantized_rows, static_cast<i64>(d)});
        std::copy(r.codes.begin(), r.codes.end(), codes.mutable_data());
        py::dict out;
        out["xhat"] = xhat;
        out["codes"] = codes;
        out["scale"] = py::array_t<double>(static_cast<py::ssize_t>(r.scale.size()), r.scale.data());
        out["zero"] = py::array_t<double>(static_cast<py::ssize_t>(r.zero.size()), r.zero.data());
        out["quantized_rows"] = r.quantized_rows;
        out["bytes"] = r.bytes;
        return out;
      },
      py::arg("rows"), py::arg("bits"), py::arg("axis") = "channel", py::arg("scheme") = "asym",
      py::arg("group") = 32, py::arg("residual") = 0,
      "quantize rows [tokens, head_dim] as quant(...) does (rules doc 2.33): dict of xhat (what the cache gives "
      "back), codes (integer codes of the quantized rows; fp8: encodings), scale and zero (per group, as stored), "
      "quantized_rows and bytes");
}

}  // namespace kvsim::python
