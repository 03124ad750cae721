#include "engine_api.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>

#include "attention/norm_cache.h"
#include "core/error.h"
#include "engine_call.h"
#include "replay/replay.h"
#include "replay/threshold_calibration.h"
#include "prefill/prefill_output.h"
#include "report/analyze_run.h"
#include "report/output_tables.h"

namespace kvsim::python {

namespace py = pybind11;

namespace {

// A vector handed to numpy without a copy: the array owns it.
template <typename T>
py::array owned_array(std::vector<T>&& v, std::vector<py::ssize_t> shape) {
  auto* hold = new std::vector<T>(std::move(v));
  py::capsule owner(hold, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(shape, hold->data(), owner);
}

// {"columns": [names], "types": [type names], "data": [numpy array or list of str per column]}.
py::dict table_dict(ColumnTable&& t) {
  py::list names, types, data;
  for (std::size_t c = 0; c < t.columns.size(); ++c) {
    const Column& col = t.schema->columns[c];
    names.append(std::string(col.name));
    types.append(column_type_name(col.type));
    std::visit(
        [&](auto& v) {
          using T = typename std::decay_t<decltype(v)>::value_type;
          if constexpr (std::is_same_v<T, std::string>) {
            data.append(py::cast(v));
          } else {
            const auto n = static_cast<py::ssize_t>(v.size());
            data.append(owned_array(std::move(v), {n}));
          }
        },
        t.columns[c]);
  }
  py::dict d;
  d["columns"] = names;
  d["types"] = types;
  d["data"] = data;
  return d;
}

// What every typed call returns: its tables as columns, summary.json's text and the printed table.
py::dict outputs(std::initializer_list<std::pair<const char*, ColumnTable*>> tables, const std::string& summary,
                 const std::string& table) {
  py::dict d;
  for (const auto& [name, t] : tables) d[name] = t ? py::object(table_dict(std::move(*t))) : py::object(py::none());
  d["summary"] = summary;  // summary.json's text
  d["table"] = table;
  return d;
}

py::array bool_mask(const std::vector<std::uint8_t>& m, py::ssize_t rows, py::ssize_t cols) {
  py::array_t<bool> a({rows, cols});
  bool* out = a.mutable_data();
  for (std::size_t i = 0; i < m.size(); ++i) out[i] = m[i] != 0;
  return a;
}

py::dict replay(const std::string& trace, const std::string& rules, const std::string& budgets,
                const std::string& out, const std::string& layers, const std::string& heads,
                const std::string& compression_point, int window, const std::string& eval, const std::string& nu,
                const std::optional<std::string>& nu_cache, bool per_query, bool save_selection, int threads,
                const std::string& command, const std::string& protocol, i64 every, const std::string& decode_start,
                const std::string& admission) {
  ReplayResult r;
  call_command("replay", [&] {
    ReplayOptions o;
    o.trace_path = trace;
    o.rules = rules;
    o.budgets = budgets;
    o.out_dir = out;
    o.layers = layers;
    o.heads = heads;
    o.protocol.compression_point = parse_compression_point(compression_point);
    o.protocol.window = window;
    o.protocol.eval = parse_eval_mode(eval);
    set_decode_protocol(o.protocol, protocol, every, decode_start, admission);
    o.nu = parse_bound_norm(nu);
    const std::string cache = nu_cache ? *nu_cache : default_norm_cache_dir();
    o.nu_cache_dir = cache == "off" ? "" : cache;
    o.per_query = per_query;
    o.save_selection = save_selection;
    if (threads < 0) fail("threads", std::to_string(threads), "must be >= 0");
    o.threads = threads;
    o.command = command;
    o.collect = true;
    r = kvsim::replay(o);
  });
  py::dict d = outputs({{"metrics", &r.metrics},
                        {"per_query", per_query ? &r.per_query : nullptr},
                        {"per_question", r.per_question.schema ? &r.per_question : nullptr}},
                       json_text(r.summary.json), r.summary.table);
  if (save_selection) {
    py::list sel;
    for (const SavedSelection& s : r.selection) {
      const Selection& x = s.selection;
      py::dict e;
      e["rule"] = s.rule_spec;
      e["budget"] = s.budget_text;
      e["layer"] = s.layer;
      e["mode"] = gqa_mode_name(x.mode);
      e["kept"] = bool_mask(x.kept, x.units, static_cast<py::ssize_t>(x.n_c));
      e["key_channels"] = x.key_channels.empty() || s.num_kv_heads <= 0
                              ? py::object(py::none())
                              : py::object(bool_mask(x.key_channels, s.num_kv_heads,
                                                     static_cast<py::ssize_t>(x.key_channels.size() / s.num_kv_heads)));
      sel.append(e);
    }
    d["selection"] = sel;
  } else {
    d["selection"] = py::none();
  }
  return d;
}

py::dict analyze(const std::string& trace, const std::string& out, const std::string& layers,
                 const std::string& compression_point, long long window, const std::string& top,
                 const std::string& command) {
  report::AnalyzeResult r;
  call_command("analyze", [&] {
    report::AnalyzeOptions o;
    o.trace_path = trace;
    o.out_dir = out;
    o.layers = layers;
    o.compression_point = compression_point;
    o.window = window;
    o.top = top;
    o.command = command;
    o.collect = true;
    r = report::run_analysis(o);
  });
  return outputs({{"key_stats", &r.key_stats}, {"key_recall", &r.key_recall}}, json_text(r.summary), r.table);
}

py::dict prefill(const std::string& trace, const std::string& out, long long segment, long long block,
                 long long budget, long long threshold, int layer_skip, const std::string& fusion,
                 int locality_anchors, const std::string& command) {
  prefill::PrefillRunResult res;
  prefill::PrefillRunOptions o;
  std::string summary;
  call_command("prefill", [&] {
    if (fusion != "on" && fusion != "off" && fusion != "both")
      fail("fusion", fusion, "must be on, off or both");
    o.cfg.segment = segment;
    o.cfg.block = block;
    o.cfg.budget = budget;
    o.cfg.threshold = threshold;
    o.cfg.layer_skip = layer_skip;
    o.cfg.validate();
    o.fusion_on = fusion != "off";
    o.fusion_off = fusion != "on";
    o.locality_anchors = locality_anchors;
    res = prefill::run_prefill(trace, o, out, command);
    summary = prefill::summary_json(res, o, command);
  });
  const auto table = [&](const TableSchema& schema, void (*write)(RowSink&, const prefill::PrefillRunResult&)) {
    ColumnTable t(schema);
    ColumnTableSink sink(t);
    write(sink, res);
    return t;
  };
  ColumnTable metrics = table(prefill::prefill_metrics_schema(), prefill::write_metrics),
              locality = table(prefill::locality_schema(), prefill::write_locality),
              shuffled = table(prefill::locality_shuffled_schema(), prefill::write_locality_shuffled);
  return outputs({{"metrics", &metrics}, {"locality", &locality}, {"locality_shuffled", &shuffled}},
                 summary, prefill::run_table(res));
}

py::dict output_tables() {
  py::dict out;
  for (const TableSchema* s : report::output_tables()) {
    py::list cols;
    for (const Column& c : s->columns)
      cols.append(py::make_tuple(std::string(c.name), column_type_name(c.type), std::string(c.unit),
                                 std::string(c.meaning)));
    out[py::str(std::string(s->file))] = cols;
  }
  return out;
}

}  // namespace

void bind_engine(py::module_& m) {
  m.def("replay", &replay, py::arg("trace"), py::arg("rules"), py::arg("budgets"), py::arg("out") = "",
        py::arg("layers") = "all", py::arg("heads") = "all", py::arg("compression_point") = "agnostic",
        py::arg("window") = ProtocolOptions{}.window, py::arg("eval") = "queries", py::arg("nu") = "exact",
        py::arg("nu_cache") = py::none(), py::arg("per_query") = false, py::arg("save_selection") = false,
        py::arg("threads") = 0, py::arg("command") = "kvsim.replay", py::arg("protocol") = "oneshot",
        py::arg("every") = 0, py::arg("decode_start") = "full", py::arg("admission") = "evict",
        "the replay (kvsim replay's options); returns the tables as columns, summary.json's text, the "
        "printed table and the kept masks; writes files only into `out` when it is given");
  m.def("calibrate_threshold", [](const std::string& trace, const std::string& rule, double fraction,
                                  const std::string& compression_point, int window) {
    ProtocolOptions p;
    p.compression_point = parse_compression_point(compression_point);
    p.window = window;
    ThresholdCalibration c;
    {
      py::gil_scoped_release release;
      c = calibrate_threshold(trace, rule, fraction, p);
    }
    py::dict d;
    d["threshold"] = c.threshold;
    d["kept_fraction"] = c.kept_fraction;
    d["candidates"] = c.candidates;
    return d;
  }, py::arg("trace"), py::arg("rule"), py::arg("fraction"), py::arg("compression_point") = "agnostic",
        py::arg("window") = ProtocolOptions{}.window,
        "the threshold X at which the budget thr=X makes a plain scorer keep `fraction` of the trace's compressible "
        "tokens over all layers and units: {threshold, kept_fraction, candidates}");
  const report::AnalyzeOptions a;
  m.def("analyze", &analyze, py::arg("trace"), py::arg("out") = "", py::arg("layers") = a.layers,
        py::arg("compression_point") = a.compression_point, py::arg("window") = a.window, py::arg("top") = a.top,
        py::arg("command") = "kvsim.analyze",
        "kvsim analyze (KeyDiff premise statistics): key_stats and key_recall as columns, summary.json's text");
  const prefill::PrefillConfig c;
  m.def("prefill", &prefill, py::arg("trace"), py::arg("out") = "", py::arg("segment") = c.segment,
        py::arg("block") = c.block, py::arg("budget") = c.budget, py::arg("threshold") = c.threshold,
        py::arg("layer_skip") = c.layer_skip, py::arg("fusion") = "on",
        py::arg("locality_anchors") = prefill::PrefillRunOptions{}.locality_anchors, py::arg("command") = "kvsim.prefill",
        "kvsim prefill TRACE (CritiPrefill simulated): metrics, locality and its shuffled baseline as columns");
  m.def("output_tables", &output_tables, "{file: [(column, type, unit, meaning)]} of every declared output table");
}

}  // namespace kvsim::python
