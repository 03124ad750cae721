// _kvsim: the C++ engine as a Python extension module. The kvsim package (kvsim/__init__.py)
// builds the user-facing API on these few entry points:
//   replay(...)            the typed replay (lib/replay/replay.h): columns in, columns out, no files
//                          unless out= is given (engine_api.h)
//   output_tables()        every declared output column (core/columns.h)
//   run_command(argv)      any other kvsim subcommand in-process (the same code as the CLI), GIL released
//   open_trace(path)       a trace: metadata and zero-copy, read-only numpy views of its layers
//   rule_catalogue()       every rule, its parameters and defaults
//   _register_*_rule(...)  rules written in Python (py_rules.h)
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <sstream>

#include "command.h"
#include "core/blas_kernels.h"
#include "core/error.h"
#include "kernels/isa.h"
#include "engine_api.h"
#include "engine_call.h"
#include "numpy_views.h"
#include "py_rules.h"
#include "quant_api.h"
#include "decode_api.h"
#include "select_arrays.h"
#include "rules/factory.h"
#include "rules/presets.h"
#include "rules/rule_labels.h"
#include "trace/trace_reader.h"

namespace kvsim::python {
namespace {

// Everything written to file descriptor 1 (printf and std::cout alike) while `fn` runs.
template <typename Fn>
std::string capture_stdout(Fn&& fn) {
  std::fflush(stdout);
  std::FILE* tmp = std::tmpfile();
  if (!tmp) {
    fn();
    return "";
  }
  const int saved = dup(1);
  dup2(fileno(tmp), 1);
  struct Restore {
    int saved;
    std::FILE* tmp;
    ~Restore() {
      std::fflush(stdout);
      dup2(saved, 1);
      close(saved);
    }
  };
  {
    Restore r{saved, tmp};
    fn();
  }
  std::string out;
  std::rewind(tmp);
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, tmp)) > 0;) out.append(buf, n);
  std::fclose(tmp);
  return out;
}

// (exit code, stdout text, error message line(s)).
py::tuple run_command(const std::vector<std::string>& args) {
  int code = 0;
  std::ostringstream err;
  std::string out;
  call_engine([&] { out = capture_stdout([&] { code = cli::run_command(args, err); }); });
  return py::make_tuple(code, out, err.str());
}

// Trace strings as Python text: invalid UTF-8 bytes as \xNN escapes (as kvsim info prints them),
// never a UnicodeDecodeError.
py::str text(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "backslashreplace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

struct PyTrace {
  std::shared_ptr<TraceReader> reader;
  std::string path;
};

struct PyLayer {
  std::shared_ptr<LayerData> data;
};

py::dict meta_dict(const TraceMeta& m) {
  py::dict d;
  d["path"] = text(m.path);
  d["version"] = m.version;
  d["model"] = text(m.model);
  d["source"] = text(m.source);
  d["model_sha256"] = text(m.model_sha256);
  d["source_precision"] = text(m.source_precision);
  d["num_layers"] = m.num_layers;
  d["num_heads"] = m.num_heads;
  d["num_kv_heads"] = m.num_kv_heads;
  d["head_dim"] = m.head_dim;
  d["hidden_size"] = m.hidden_size;
  d["rope_style"] = m.rope_style == RopeStyle::half ? "half" : "interleaved";
  d["rope_theta"] = m.rope_theta;
  d["rope_scaling"] = text(m.rope_scaling);
  d["attn_scale"] = m.attn_scale;
  d["attn_logit_softcap"] = m.attn_softcap;
  d["rotary_dim"] = m.rotated_dims();
  d["prefill_len"] = m.prefill_len;
  d["seq_len"] = m.seq_len;
  d["context_end"] = m.context_end();
  d["dtype"] = dtype_name(m.dtype);
  d["has_o_proj"] = m.has_o_proj;
  d["has_o"] = m.has_o;
  py::dict spans;
  for (const auto& [k, v] : m.spans) spans[text(k)] = py::make_tuple(v.first, v.second);
  d["spans"] = spans;
  return d;
}

void bind_trace(py::module_& m) {
  py::class_<PyLayer>(m, "Layer", "One trace layer, widened to float32; arrays are read-only views (no copy).")
      .def_property_readonly("index", [](const PyLayer& l) { return l.data->layer; })
      .def_property_readonly("q", [](const PyLayer& l) {
        const auto& d = *l.data;
        return view_of(l.data, d.q.data(), {d.num_heads, d.num_q, d.head_dim}, c_strides({d.num_heads, d.num_q, d.head_dim}));
      }, "queries of the stored positions [num_heads, len(q_pos), head_dim]")
      .def_property_readonly("k", [](const PyLayer& l) {
        const auto& d = *l.data;
        return view_of(l.data, d.k.data(), {d.num_kv_heads, d.seq_len, d.head_dim},
                       c_strides({d.num_kv_heads, d.seq_len, d.head_dim}));
      }, "keys [num_kv_heads, seq_len, head_dim]")
      .def_property_readonly("v", [](const PyLayer& l) {
        const auto& d = *l.data;
        return view_of(l.data, d.v.data(), {d.num_kv_heads, d.seq_len, d.head_dim},
                       c_strides({d.num_kv_heads, d.seq_len, d.head_dim}));
      }, "values [num_kv_heads, seq_len, head_dim]")
      .def_property_readonly("o_proj", [](const PyLayer& l) -> py::object {
        const auto& d = *l.data;
        if (!d.has_o_proj()) return py::none();
        const i64 in = static_cast<i64>(d.num_heads) * d.head_dim;
        return view_of(l.data, d.o_proj.data(), {d.hidden_size, in}, {in, 1});
      }, "output projection [hidden_size, num_heads*head_dim] (Hugging Face layout) or None")
      .def_property_readonly("o", [](const PyLayer& l) -> py::object {
        const auto& d = *l.data;
        if (d.o.empty()) return py::none();
        return view_of(l.data, d.o.data(), {d.num_heads, d.num_q, d.head_dim}, c_strides({d.num_heads, d.num_q, d.head_dim}));
      }, "the model's attention output [num_heads, len(q_pos), head_dim] or None");

  py::class_<PyTrace>(m, "Trace", "An open trace file (kvsim.open_trace).")
      .def_property_readonly("path", [](const PyTrace& t) { return t.path; })
      .def_property_readonly("meta", [](const PyTrace& t) { return meta_dict(t.reader->meta()); })
      .def_property_readonly("num_layers", [](const PyTrace& t) { return t.reader->meta().num_layers; })
      .def_property_readonly("q_pos", [](const PyTrace& t) {
        const auto& q = t.reader->meta().q_pos;
        return copy_1d(q.data(), q.size());
      }, "positions whose queries are stored")
      .def_property_readonly("positions", [](const PyTrace& t) {
        const auto& q = t.reader->meta().q_pos;
        return copy_1d(q.data(), q.size());
      }, "the same as q_pos")
      .def_property_readonly("segments", [](const PyTrace& t) {
        const auto& s = t.reader->meta().segment;
        return copy_1d(s.data(), s.size());
      }, "segment of every position: 0 context, 1 question, 2 generated")
      .def_property_readonly("input_ids", [](const PyTrace& t) {
        const auto& s = t.reader->meta().input_ids;
        return copy_1d(s.data(), s.size());
      })
      .def("layer", [](const PyTrace& t, int l) {
        const auto& m = t.reader->meta();
        if (l < 0) l += m.num_layers;
        if (l < 0 || l >= m.num_layers) throw py::index_error("layer " + std::to_string(l) + " outside 0.." + std::to_string(m.num_layers - 1));
        LayerRequest req;
        req.o = m.has_o;
        std::shared_ptr<LayerData> d;
        {
          py::gil_scoped_release release;
          d = std::make_shared<LayerData>(t.reader->read_layer(l, req));
        }
        return PyLayer{d};
      }, py::arg("index"), "read one layer (numpy views stay valid as long as you hold them)")
      .def("__len__", [](const PyTrace& t) { return t.reader->meta().num_layers; })
      .def("__repr__", [](const PyTrace& t) {
        const auto& m = t.reader->meta();
        return "<kvsim.Trace " + t.path + ": " + std::to_string(m.num_layers) + " layers, " + std::to_string(m.num_heads) +
               " heads (" + std::to_string(m.num_kv_heads) + " KV), " + std::to_string(m.seq_len) + " positions>";
      });
  m.def("open_trace", [](const std::string& path) {
    py::gil_scoped_release release;
    return PyTrace{std::make_shared<TraceReader>(path), path};
  }, py::arg("path"), "open a trace (kvsim trace format v1/v2); errors name the file and field");
}

py::list catalogue() {
  py::list out;
  for (const auto& r : rule_catalogue()) {
    py::list params;
    for (const auto& p : r.params) {
      py::dict d;
      d["name"] = p.name;
      d["type"] = p.type;
      d["default"] = p.default_value;
      d["help"] = p.help;
      params.append(d);
    }
    py::dict d;
    d["name"] = r.name;
    d["summary"] = r.summary;
    d["params"] = params;
    d["in_default"] = r.in_all;
    out.append(d);
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_kvsim, m) {
  m.doc() = "kvsim's C++ engine (use the kvsim package: import kvsim)";
  py::register_exception<Error>(m, "KvsimError", PyExc_ValueError);
  m.attr("__version__") = KVSIM_VERSION;
  kernels::check_isa_setting();  // a bad KVSIM_FORCE_ISA fails the import, not a later kernel
  m.def("run_command", &run_command, py::arg("args"),
        "run a kvsim subcommand in-process: (exit code, stdout, error text)");
  m.def("rule_catalogue", &catalogue, "every rule with its parameters and defaults");
  m.def("kvpress_presets", [] {
        py::list out;
        for (const auto& p : kvpress_presets())
          out.append(py::make_tuple(std::string(p.name), std::string(p.spec), std::string(p.kvpress)));
        return out;
      }, "(NAME@kvpress, the kvsim spec, the kvpress press it equals) for every preset");
  m.def("expand_rules", [](const std::string& specs) {
        std::vector<std::string> out;
        for (const auto& r : make_rules(specs)) out.push_back(r->spec());
        return out;
      }, py::arg("specs"), "the canonical spec of every rule of a rule list ('default', 'all', 'a;b')");
  m.def("short_rule_labels", &short_rule_labels, py::arg("specs"),
        "{spec: short label} (parameters at their defaults dropped, unique among the specs given)");
  m.def("canonical_spec", [](const std::string& spec) { return make_rule(spec)->spec(); }, py::arg("spec"),
        "the canonical spec string (every parameter spelled out); errors name the bad part");
  m.def("_note_blas_choice", &note_blas_choice, py::arg("chosen_by"));
  m.def("_blas_core_level", &blas_core_level, py::arg("core"));  // kvsim._blas mirrors it before the import
  m.def("blas_info", [] {
        const BlasInfo b = blas_info();
        py::dict d;
        d["name"] = b.name;
        d["config"] = b.config;
        d["core"] = b.core;
        d["threading"] = b.threading;
        d["chosen_by"] = b.chosen_by;
        if (!b.corrected_from.empty()) d["corrected_from"] = b.corrected_from;
        return d;
      }, "the BLAS the engine runs: library, build, core (kernels), threading, who chose the core");
  bind_trace(m);
  bind_engine(m);
  bind_rules(m);
  bind_select(m);
  bind_decode(m);
  bind_quant(m);
}

}  // namespace kvsim::python
