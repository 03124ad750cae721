#include "select_arrays.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "rules/factory.h"
#include "rules/window_attention.h"

namespace kvsim::python {
namespace {

namespace py = pybind11;
using F32 = py::array_t<float, py::array::c_style | py::array::forcecast>;

avec<float> copy_of(const F32& a) { return avec<float>(a.data(), a.data() + a.size()); }

void need_shape(const F32& a, std::initializer_list<py::ssize_t> want, const char* name) {
  std::vector<py::ssize_t> w(want);
  bool ok = a.ndim() == static_cast<py::ssize_t>(w.size());
  for (std::size_t i = 0; ok && i < w.size(); ++i) ok = w[i] < 0 || a.shape(static_cast<py::ssize_t>(i)) == w[i];
  if (!ok) {
    std::string got;
    for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
    fail(std::string("kvsim.select: ") + name, "", "has shape [" + got + "]");
  }
}

}  // namespace

ArraysLayer arrays_layer(const F32& k, py::object v_obj, py::object q_obj, py::object q_pos_obj, py::object o_proj_obj,
                         double attn_scale, long long num_heads) {
  need_shape(k, {-1, -1, -1}, "k");
  const int Hkv = static_cast<int>(k.shape(0)), d = static_cast<int>(k.shape(2));
  const i64 T = k.shape(1);
  ArraysLayer out;
  TraceMeta& meta = out.meta;
  meta.path = "kvsim.select";
  meta.model = "arrays";
  meta.num_layers = 1;
  meta.num_kv_heads = Hkv;
  meta.num_heads = num_heads > 0 ? static_cast<int>(num_heads) : Hkv;
  meta.head_dim = d;
  meta.seq_len = T;
  meta.prefill_len = T;
  meta.input_ids.assign(static_cast<std::size_t>(T), 0);
  meta.segment.assign(static_cast<std::size_t>(T), kContext);
  meta.attn_scale = attn_scale > 0 ? attn_scale : 1.0 / std::sqrt(static_cast<double>(d));
  auto data = std::make_shared<LayerData>();
  data->layer = 0;
  data->num_kv_heads = Hkv;
  data->head_dim = d;
  data->seq_len = T;
  data->k = copy_of(k);
  if (!v_obj.is_none()) {
    const F32 v = F32::ensure(v_obj);
    need_shape(v, {Hkv, T, d}, "v");
    data->v = copy_of(v);
  } else {
    data->v.assign(data->k.size(), 0.0f);
  }
  if (!q_obj.is_none()) {
    const F32 q = F32::ensure(q_obj);
    need_shape(q, {-1, -1, d}, "q");
    meta.num_heads = static_cast<int>(q.shape(0));
    const auto pos = py::array_t<long long, py::array::c_style | py::array::forcecast>::ensure(q_pos_obj);
    if (!pos || pos.ndim() != 1 || pos.shape(0) != q.shape(1)) fail("kvsim.select", "q_pos", "needs one position per query row");
    meta.q_pos.assign(pos.data(), pos.data() + pos.size());
    for (std::size_t i = 0; i < meta.q_pos.size(); ++i)
      if (meta.q_pos[i] < 0 || meta.q_pos[i] >= T || (i && meta.q_pos[i] <= meta.q_pos[i - 1]))
        fail("kvsim.select", "q_pos", "must be increasing positions in [0, T)");
    data->q = copy_of(q);
  } else {
    meta.q_pos = {T - 1};
    data->q.assign(static_cast<std::size_t>(meta.num_heads) * d, 0.0f);
  }
  if (meta.num_heads % Hkv) fail("kvsim.select", "num_heads", "must be a multiple of the KV heads");
  data->num_heads = meta.num_heads;
  data->num_q = static_cast<i64>(meta.q_pos.size());
  if (!o_proj_obj.is_none()) {
    const F32 w = F32::ensure(o_proj_obj);
    need_shape(w, {-1, static_cast<py::ssize_t>(meta.num_heads) * d}, "o_proj");
    data->hidden_size = static_cast<int>(w.shape(0));
    data->o_proj = copy_of(w);
    meta.has_o_proj = true;
  } else {
    data->hidden_size = meta.num_heads * d;
  }
  meta.hidden_size = data->hidden_size;
  out.data = std::move(data);
  return out;
}

namespace {

py::list select_arrays(const std::string& spec, const F32& k, py::object v_obj, py::object q_obj, py::object q_pos_obj,
                       py::object o_proj_obj, long long n_c, const std::vector<std::string>& budget_texts,
                       double attn_scale, long long num_heads) {
  auto [meta, data] = arrays_layer(k, v_obj, q_obj, q_pos_obj, o_proj_obj, attn_scale, num_heads);
  if (n_c < 1 || n_c > meta.seq_len) fail("kvsim.select", "n_c", "must be in 1..T (" + std::to_string(meta.seq_len) + ")");
  std::vector<Budget> budgets;
  for (const auto& b : budget_texts) {
    budgets.push_back(Budget::parse(b));
    if (!budgets.back().per_layer.empty())
      fail("kvsim.select", b, "per-layer budgets (layers=...) need a whole trace: use kvsim.replay");
  }
  std::vector<Selection> sels;
  {
    py::gil_scoped_release release;
    std::vector<i64> eval_rows;
    for (std::size_t i = 0; i < meta.q_pos.size(); ++i)
      if (meta.q_pos[i] >= n_c) eval_rows.push_back(static_cast<i64>(i));
    const auto rule = make_rule(spec);
    check_threshold_budgets(*rule, budgets);
    LayerCache cache(meta, *data, n_c, eval_rows);
    WindowAttentionMemo memo;
    sels = rule->select(RuleInput::of_layer(meta, 0, data, n_c, eval_rows, &cache, &memo), budgets);
  }
  py::list out;
  for (const auto& s : sels) {
    py::array_t<bool> m(std::vector<py::ssize_t>{s.units, static_cast<py::ssize_t>(s.n_c)});
    std::transform(s.kept.begin(), s.kept.end(), m.mutable_data(), [](std::uint8_t x) { return x != 0; });
    out.append(m);
  }
  return out;
}

}  // namespace

void bind_select(py::module_& m) {
  m.def("_select", &select_arrays, py::arg("spec"), py::arg("k"), py::arg("v"), py::arg("q"), py::arg("q_pos"),
        py::arg("o_proj"), py::arg("n_c"), py::arg("budgets"), py::arg("attn_scale"), py::arg("num_heads"));
}

}  // namespace kvsim::python
