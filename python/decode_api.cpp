#include "decode_api.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "engine_call.h"
#include "replay/decode_protocol.h"
#include "replay/protocol.h"
#include "rules/factory.h"
#include "trace/trace_reader.h"

namespace kvsim::python {
namespace {

namespace py = pybind11;

py::dict decode_masks(const std::string& trace, const std::string& spec, const std::string& budget, int layer,
                      long long every, const std::string& decode_start, const std::string& compression_point,
                      int window) {
  std::vector<Selection> sels;
  std::vector<i64> eval_pos;
  i64 seq_len = 0;
  call_command("decode_masks", [&] {
    TraceReader reader(trace);
    const TraceMeta& meta = reader.meta();
    ProtocolOptions po;
    po.compression_point = parse_compression_point(compression_point);
    po.window = window;
    set_decode_protocol(po, "decode", every, decode_start);
    const Protocol p = resolve_protocol(meta, po);
    if (layer < 0 || layer >= meta.num_layers) fail("kvsim.decode_masks", "layer", std::to_string(layer) + " is not a layer of " + trace);
    const auto data = std::make_shared<const LayerData>(reader.read_layer(layer));
    LayerCache cache(meta, *data, p.n_c, p.eval_rows, p.window_rows);
    const auto rule = make_rule(spec);
    const RuleInput in = RuleInput::of_layer(meta, layer, data, p.n_c, p.eval_rows, &cache);
    sels = decode_select(*rule, in, {Budget::parse(budget)}, {every, po.decode_start_compressed, window});
    for (i64 r : p.eval_rows) eval_pos.push_back(meta.q_pos[static_cast<std::size_t>(r)]);
    seq_len = meta.seq_len;
  });
  const Selection& s = sels.at(0);
  const py::ssize_t U = s.units, ne = static_cast<py::ssize_t>(eval_pos.size());
  py::array_t<bool> masks(std::vector<py::ssize_t>{U, ne, static_cast<py::ssize_t>(seq_len)});
  bool* out = masks.mutable_data();
  std::fill(out, out + U * ne * seq_len, false);
  for (py::ssize_t u = 0; u < U; ++u)
    for (py::ssize_t q = 0; q < ne; ++q) {
      const auto& m = s.per_query.empty() ? std::vector<std::uint8_t>() : s.per_query[u * ne + q];
      bool* row = out + (u * ne + q) * seq_len;
      if (!m.empty()) {
        for (std::size_t j = 0; j < m.size(); ++j) row[j] = m[j] != 0;
      } else {  // no compression after n_0: the one-shot kept set, then every token up to t
        for (i64 j = 0; j <= eval_pos[q]; ++j) row[j] = j < s.n_c ? s.unit_mask(static_cast<int>(u))[j] != 0 : true;
      }
    }
  py::dict d;
  d["masks"] = masks;
  d["positions"] = py::array_t<i64>(static_cast<py::ssize_t>(eval_pos.size()), eval_pos.data());
  d["mode"] = gqa_mode_name(s.mode);
  return d;
}

}  // namespace

void bind_decode(py::module_& m) {
  m.def("decode_masks", &decode_masks, py::arg("trace"), py::arg("rule"), py::arg("budget"), py::arg("layer") = 0,
        py::arg("every") = 64, py::arg("decode_start") = "full", py::arg("compression_point") = "agnostic",
        py::arg("window") = 32,
        "the decode protocol's cache of every evaluation query for one rule, budget and layer (rules doc 1.9): "
        "{masks: bool [units, n_eval, seq_len] (True = held; the query's own position and every earlier one it "
        "still holds), positions: the evaluation queries' positions, mode: kv | query}");
}

}  // namespace kvsim::python
