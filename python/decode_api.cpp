#include "decode_api.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <map>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "engine_call.h"
#include "select_arrays.h"
#include "replay/decode_protocol.h"
#include "replay/decode_view.h"
#include "replay/layer_plans.h"
#include "replay/protocol.h"
#include "rules/factory.h"
#include "trace/trace_reader.h"

namespace kvsim::python {
namespace {

namespace py = pybind11;

// The decode API's protocol options: compression point and window (the decode protocol's own
// options are set by the caller).
ProtocolOptions api_options(const std::string& compression_point, int window) {
  ProtocolOptions po;
  po.compression_point = parse_compression_point(compression_point);
  po.window = window;
  return po;
}

py::dict decode_masks(const std::string& trace, const std::string& spec, const std::string& budget, int layer,
                      long long every, const std::string& decode_start, const std::string& compression_point,
                      int window) {
  std::vector<Selection> sels;
  std::vector<i64> eval_pos;
  i64 seq_len = 0;
  call_command("decode_masks", [&] {
    TraceReader reader(trace);
    const TraceMeta& meta = reader.meta();
    ProtocolOptions po = api_options(compression_point, window);
    set_decode_protocol(po, "decode", every, decode_start);
    const Protocol p = resolve_protocol(meta, po);
    if (layer < 0 || layer >= meta.num_layers) fail("kvsim.decode_masks", "layer", std::to_string(layer) + " is not a layer of " + trace);
    const auto data = std::make_shared<const LayerData>(reader.read_layer(layer));
    LayerCache cache(meta, *data, p.n_c, p.eval_rows, p.window_rows);
    const auto rule = make_rule(spec);
    RuleInput in = RuleInput::of_layer(meta, layer, data, p.n_c, p.eval_rows, &cache);
    const std::vector<Budget> budgets = {Budget::parse(budget)};
    std::vector<std::vector<i64>> planned;  // a cross-layer rule's plan of this layer
    if (rule->layer_planner()) {
      planned.push_back(plan_every_layer(meta, p, reader, *rule, budgets[0]).at(layer));
      in.planned = &planned;
    }
    sels = decode_select(*rule, in, budgets, {every, po.decode_start_compressed, window});
    for (i64 r : p.eval_rows) eval_pos.push_back(meta.q_pos[static_cast<std::size_t>(r)]);
    seq_len = meta.seq_len;
  });
  const Selection& s = sels.at(0);
  const py::ssize_t U = s.units, ne = static_cast<py::ssize_t>(eval_pos.size());
  py::array_t<bool> masks(std::vector<py::ssize_t>{U, ne, static_cast<py::ssize_t>(seq_len)});
  bool* out = masks.mutable_data();
  std::fill(out, out + U * ne * seq_len, false);
  std::vector<std::uint8_t> m;
  for (py::ssize_t u = 0; u < U; ++u)
    for (py::ssize_t q = 0; q < ne; ++q) {
      bool* row = out + (u * ne + q) * seq_len;
      if (s.has_query_masks()) {
        s.query_mask(static_cast<int>(u), q, eval_pos[q], m);
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

// A cross-layer rule's allocation at the compression point of `trace` (rules doc 1.9: kept under
// the decode protocol): {layer: int array [units]} of kept tokens at n_c, or None for a rule
// without one. The closed loop hands a layer's counts to _decode_cut.
py::object decode_plan(const std::string& trace, const std::string& spec, const std::string& budget,
                       const std::string& compression_point, int window) {
  std::map<int, std::vector<i64>> plan;
  call_command("decode_plan", [&] {
    TraceReader reader(trace);
    const TraceMeta& meta = reader.meta();
    const Protocol p = resolve_protocol(meta, api_options(compression_point, window));
    plan = plan_every_layer(meta, p, reader, *make_rule(spec), Budget::parse(budget));
  });
  if (plan.empty()) return py::none();
  py::dict d;
  for (const auto& [layer, counts] : plan) d[py::int_(layer)] = py::array_t<i64>(static_cast<py::ssize_t>(counts.size()), counts.data());
  return d;
}

// One compression of the decode protocol on a running model's cache (the closed loop): k, v
// [Hkv, T, d] and q [H, len(q_pos), d] at every position so far, o_proj [D, H d] (or None: the
// rules that need W_o refuse); cached[u] the positions unit u
// holds (one array: shared); returns {cached, mode, cut}; for a step-wise rule, step_masks bool
// [units, n, T] (each query of [L, T)'s cache, by position); and, when the cut prunes key channels
// (ThinK), key_channels bool [units, d], or quantizes (quant), quant: {k, v [units, L, d] by
// position, k_coded, v_coded bool [units, L]}: the rows this cut's cache gives back.
py::dict decode_cut_arrays(const std::string& spec, const py::array_t<float, py::array::c_style | py::array::forcecast>& k,
                           py::object v, py::object q, py::object q_pos, py::object o_proj,
                           const std::vector<std::vector<i64>>& cached,
                           const std::string& mode, long long L, const std::string& budget, int window,
                           double attn_scale, long long num_heads, const py::dict& rope,
                           const std::vector<i64>& plan, long long n0) {
  DecodeCut c;
  call_command("decode_cut", [&] {
    auto [meta, data] = arrays_layer(k, v, q, q_pos, o_proj, attn_scale, num_heads);
    // The model's RoPE (a trace's meta: rope_theta, rope_style, rope_scaling, rotary_dim), for the
    // rules that undo it (ExpectedAttention, CAP, leverage, DuoAttention).
    if (rope.contains("rope_theta")) meta.rope_theta = rope["rope_theta"].cast<double>();
    if (rope.contains("rope_style"))
      meta.rope_style = rope["rope_style"].cast<std::string>() == "interleaved" ? RopeStyle::interleaved : RopeStyle::half;
    if (rope.contains("rope_scaling")) meta.rope_scaling = rope["rope_scaling"].cast<std::string>();
    if (rope.contains("rotary_dim")) meta.rotary_dim = rope["rotary_dim"].cast<int>();
    if (L < 1 || L > meta.seq_len) fail("kvsim.decode_cut", "L", "must be in 1..T (" + std::to_string(meta.seq_len) + ")");
    const Budget b = Budget::parse(budget);
    const auto rule = make_rule(spec);
    const i64 keep = decode_keep(b, L);
    // A cross-layer rule: its counts at this cut from the plan at n_0 (Rule::decode_counts).
    std::vector<i64> counts;
    if (rule->layer_planner()) {
      if (plan.empty()) fail("kvsim.decode_cut", "plan", spec + " allocates across layers: pass its plan at n_0 (_decode_plan)");
      if (keep < 0) fail(spec, "budget " + budget, "a threshold does not apply to a cross-layer rule");
      std::vector<i64> held;
      for (const auto& u : cached) held.push_back(static_cast<i64>(u.size()));
      counts = rule->decode_counts(plan, n0, b.tokens_for(n0), keep, held);
    }
    // Tokens [L, T) of the arrays follow the cache: the next interval, which the oracles read.
    c = decode_cut(*rule, meta, *data, cached, mode == "query" ? GqaMode::query : GqaMode::kv, L, meta.seq_len, b,
                   keep, window, 0, counts.empty() ? nullptr : &counts);
  });
  py::dict d;
  d["cached"] = c.cached;
  d["mode"] = gqa_mode_name(c.mode);
  d["cut"] = c.cut;
  const py::ssize_t U = static_cast<py::ssize_t>(c.cached.size());
  if (c.stepwise && c.view) {  // a step-wise rule's cache of each query in [L, T), by position
    const Selection& st = *c.stepwise;
    const py::ssize_t n = static_cast<py::ssize_t>(st.per_query.size()) / st.units;
    const py::ssize_t E = static_cast<py::ssize_t>(c.view->positions[0].size());  // tokens of the view
    const i64 T = c.view->position(0, E - 1) + 1;
    py::array_t<bool> m(std::vector<py::ssize_t>{st.units, n, static_cast<py::ssize_t>(T)});
    bool* o = m.mutable_data();
    std::fill(o, o + st.units * n * T, false);
    for (int u = 0; u < st.units; ++u)
      for (py::ssize_t qi = 0; qi < n; ++qi) {
        const auto& pm = st.per_query[static_cast<std::size_t>(u * n + qi)];
        for (std::size_t j = 0; j < pm.size(); ++j)
          if (pm[j]) o[(u * n + qi) * T + c.view->position(u, static_cast<i64>(j))] = true;
      }
    d["step_masks"] = m;
  }
  if (!c.key_channels.empty()) {
    const py::ssize_t dim = static_cast<py::ssize_t>(c.key_channels.size()) / U;
    py::array_t<bool> ch(std::vector<py::ssize_t>{U, dim});
    std::copy(c.key_channels.begin(), c.key_channels.end(), ch.mutable_data());
    d["key_channels"] = ch;
  }
  if (c.quant) {
    const QuantizedKV& q = *c.quant;
    const std::vector<py::ssize_t> rows{q.units, static_cast<py::ssize_t>(q.n_c), q.d}, flags{q.units, static_cast<py::ssize_t>(q.n_c)};
    py::array_t<float> k(rows), v(rows);
    std::copy(q.k.begin(), q.k.end(), k.mutable_data());
    std::copy(q.v.begin(), q.v.end(), v.mutable_data());
    py::array_t<bool> kc(flags), vc(flags);
    std::copy(q.k_coded.begin(), q.k_coded.end(), kc.mutable_data());
    std::copy(q.v_coded.begin(), q.v_coded.end(), vc.mutable_data());
    py::dict qd;
    qd["k"] = k;
    qd["v"] = v;
    qd["k_coded"] = kc;
    qd["v_coded"] = vc;
    d["quant"] = qd;
  }
  return d;
}

// A query-aware rule's own cache for each of a running model's queries (Quest: the pages it
// attends to), from the keys k [Hkv, T, d] of positions 0..T-1 and the queries q [H, n, d] at
// q_pos (>= n_c); the rule's budget counts tokens of the compression point n_c, as offline.
// Returns bool [H, n, T] (True: the query attends to that key), or None where the rule attends
// densely (a layer below Quest's dense_layers, or a rule without per-query masks).
py::object query_masks(const std::string& spec, const py::array_t<float, py::array::c_style | py::array::forcecast>& k,
                       py::object q, py::object q_pos, long long n_c, const std::string& budget, int layer,
                       double attn_scale, long long num_heads) {
  Selection sel;
  std::vector<i64> pos;
  i64 T = 0;
  int H = 0, G = 1;
  call_command("query_masks", [&] {
    auto [meta, data] = arrays_layer(k, py::none(), q, q_pos, py::none(), attn_scale, num_heads);
    std::vector<i64> rows(static_cast<std::size_t>(meta.num_queries()));
    for (std::size_t r = 0; r < rows.size(); ++r) {
      rows[r] = static_cast<i64>(r);
      if (meta.q_pos[r] < n_c) fail("kvsim.query_masks", "q_pos", "a query before the compression point n_c");
    }
    RuleInput in = RuleInput::of_layer(meta, layer, data, n_c, rows, nullptr);
    sel = std::move(make_rule(spec)->select(in, {Budget::parse(budget)}).at(0));
    pos = meta.q_pos;
    T = data->seq_len;
    H = data->num_heads;
    G = data->num_heads / data->num_kv_heads;
  });
  if (sel.per_query.empty()) return py::none();
  const py::ssize_t n = static_cast<py::ssize_t>(pos.size());
  py::array_t<bool> out(std::vector<py::ssize_t>{H, n, static_cast<py::ssize_t>(T)});
  bool* o = out.mutable_data();
  std::fill(o, o + H * n * T, false);
  for (int h = 0; h < H; ++h) {
    const int u = sel.mode == GqaMode::kv ? h / G : h;
    for (py::ssize_t qi = 0; qi < n; ++qi) {
      const auto& m = sel.per_query[static_cast<std::size_t>(u * n + qi)];
      for (std::size_t j = 0; j < m.size(); ++j) o[(h * n + qi) * T + static_cast<py::ssize_t>(j)] = m[j] != 0;
    }
  }
  return out;
}

}  // namespace

void bind_decode(py::module_& m) {
  m.def("_decode_cut", &decode_cut_arrays, py::arg("spec"), py::arg("k"), py::arg("v"), py::arg("q"), py::arg("q_pos"),
        py::arg("o_proj"), py::arg("cached"), py::arg("mode"), py::arg("L"), py::arg("budget"), py::arg("window"), py::arg("attn_scale"),
        py::arg("num_heads"), py::arg("rope") = py::dict(), py::arg("plan") = std::vector<i64>{}, py::arg("n0") = 0);
  m.def("_query_masks", &query_masks, py::arg("spec"), py::arg("k"), py::arg("q"), py::arg("q_pos"), py::arg("n_c"),
        py::arg("budget"), py::arg("layer"), py::arg("attn_scale"), py::arg("num_heads"));
  m.def("_decode_plan", &decode_plan, py::arg("trace"), py::arg("spec"), py::arg("budget"),
        py::arg("compression_point") = "agnostic", py::arg("window") = 32);
  m.def("decode_masks", &decode_masks, py::arg("trace"), py::arg("rule"), py::arg("budget"), py::arg("layer") = 0,
        py::arg("every") = 64, py::arg("decode_start") = "full", py::arg("compression_point") = "agnostic",
        py::arg("window") = 32,
        "the decode protocol's cache of every evaluation query for one rule, budget and layer (rules doc 1.9): "
        "{masks: bool [units, n_eval, seq_len] (True = held; the query's own position and every earlier one it "
        "still holds), positions: the evaluation queries' positions, mode: kv | query}");
}

}  // namespace kvsim::python
