#include "py_rules.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <cstdint>
#include <map>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "rules/factory.h"
#include "numpy_views.h"
#include "rules/gqa.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim::python {
namespace {

PyObject* g_rule_error = nullptr;  // kvsim.RuleError, created in bind_rules

std::mutex g_names_mu;
std::map<std::string, std::uint64_t> g_owners;  // Python rules registered now -> their owner's token
std::uint64_t g_next_token = 0;

// A Python callable shared by every rule object the registry builds; released with the GIL.
using PyFn = std::shared_ptr<py::object>;
PyFn hold(py::function fn) {
  return PyFn(new py::object(std::move(fn)), [](py::object* o) {
    py::gil_scoped_acquire gil;
    delete o;
  });
}

// What a Python rule sees of one layer (all arrays read-only; views where the data is contiguous
// enough, small copies for gathered query rows).
struct LayerView {
  std::shared_ptr<const LayerData> data;
  const TraceMeta* meta = nullptr;
  int layer = 0;
  i64 n_c = 0, window = 0;
  std::vector<i64> eval_rows;

  py::array k() const { return slice(data->k.data(), n_c); }
  py::array v() const { return slice(data->v.data(), n_c); }
  py::array keys() const { return slice(data->k.data(), data->seq_len); }
  py::array values() const { return slice(data->v.data(), data->seq_len); }
  py::array q() const {
    const auto& d = *data;
    return view_of(data, d.q.data(), {d.num_heads, d.num_q, d.head_dim}, c_strides({d.num_heads, d.num_q, d.head_dim}));
  }
  py::object o_proj() const {
    const auto& d = *data;
    if (!d.has_o_proj()) return py::none();
    return view_of(data, d.o_proj.data(), {d.hidden_size, static_cast<i64>(d.num_heads) * d.head_dim},
                   {static_cast<i64>(d.num_heads) * d.head_dim, 1});
  }
  py::array q_pos() const { return copy_1d(meta->q_pos.data(), meta->q_pos.size()); }
  py::array positions() const {
    py::array_t<i64> p(std::vector<py::ssize_t>{static_cast<py::ssize_t>(n_c)});
    for (i64 j = 0; j < n_c; ++j) p.mutable_at(j) = j;
    return p;
  }
  // Queries of stored rows, gathered: [H, rows, d].
  py::array gather(const std::vector<i64>& rows) const {
    const auto& d = *data;
    py::array_t<float> out({static_cast<py::ssize_t>(d.num_heads), static_cast<py::ssize_t>(rows.size()),
                            static_cast<py::ssize_t>(d.head_dim)});
    float* o = out.mutable_data();
    for (int h = 0; h < d.num_heads; ++h)
      for (std::size_t i = 0; i < rows.size(); ++i)
        std::copy_n(d.q_row(h, rows[i]), d.head_dim, o + (h * static_cast<i64>(rows.size()) + static_cast<i64>(i)) * d.head_dim);
    return out;
  }
  py::array q_window() const {
    std::vector<i64> rows;
    for (i64 t = std::max<i64>(0, n_c - window); t < n_c; ++t) {
      auto it = std::lower_bound(meta->q_pos.begin(), meta->q_pos.end(), t);
      if (it == meta->q_pos.end() || *it != t)
        fail(meta->path, "/q_pos", "layer.q_window needs the query at position " + std::to_string(t) +
                                       " (the last " + std::to_string(window) + " before n_c), which is not stored");
      rows.push_back(it - meta->q_pos.begin());
    }
    return gather(rows);
  }
  py::array q_eval() const { return gather(eval_rows); }
  py::array eval_pos() const {
    py::array_t<i64> p(std::vector<py::ssize_t>{static_cast<py::ssize_t>(eval_rows.size())});
    for (std::size_t i = 0; i < eval_rows.size(); ++i) p.mutable_at(i) = meta->q_pos[eval_rows[i]];
    return p;
  }

 private:
  py::array slice(const float* base, i64 len) const {
    const auto& d = *data;
    return view_of(data, base, {d.num_kv_heads, len, d.head_dim}, {d.seq_len * d.head_dim, d.head_dim, 1});
  }
};

struct BudgetView {
  std::string text;
  i64 tokens = 0;       // nominal kept tokens per unit (protected included)
  double fraction = 0;  // kept share of n_c
};

LayerView make_view(const RuleInput& in, i64 window) {
  LayerView v;
  v.data = in.data_owner ? in.data_owner : std::make_shared<const LayerData>(*in.data);
  v.meta = in.meta;
  v.layer = in.layer;
  v.n_c = in.n_c;
  v.window = window;
  v.eval_rows = in.eval_rows;
  return v;
}

std::string where(const std::string& rule, int layer) { return "rule '" + rule + "' on layer " + std::to_string(layer); }

// Calls fn(args...) with the GIL held; an Exception becomes kvsim.RuleError (its cause kept) and
// propagates to the caller of the replay. KeyboardInterrupt, SystemExit and other BaseExceptions
// that are not Exceptions propagate as themselves.
template <typename... Args>
py::object call(const PyFn& fn, const std::string& rule, int layer, Args&&... args) {
  try {
    return (*fn)(std::forward<Args>(args)...);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_Exception)) throw;
    py::raise_from(e, g_rule_error, (where(rule, layer) + ": " + py::str(e.value()).cast<std::string>()).c_str());
    throw py::error_already_set();
  }
}

// Only real numbers (and booleans) are scores or masks: complex would lose its imaginary part,
// strings and objects would be parsed or cast silently.
void require_real_array(const py::object& result, const std::string& what) {
  if (!py::isinstance<py::array>(result)) return;  // lists, torch tensors: converted below
  const char kind = py::reinterpret_borrow<py::array>(result).dtype().kind();
  if (kind != 'f' && kind != 'i' && kind != 'u' && kind != 'b')
    fail(what, "", "must be a real (float, integer or bool) array, got dtype " +
                       py::str(py::reinterpret_borrow<py::array>(result).dtype()).cast<std::string>());
}

// The rule's returned array as float32 [rows, n_c]; rows must be one of `allowed`.
std::vector<float> as_matrix(const py::object& result, const std::string& what, i64 n_c, const std::vector<i64>& allowed,
                             i64& rows) {
  require_real_array(result, what);
  py::array_t<float, py::array::c_style | py::array::forcecast> a;
  try {
    py::object arr = py::module_::import("numpy").attr("asarray")(result);  // lists, tensors
    require_real_array(arr, what);
    a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_Exception)) throw;
  }
  if (!a) fail(what, "", "must return a numeric array, got " + py::str(py::type::of(result)).cast<std::string>());
  std::string want;
  for (i64 r : allowed) want += (want.empty() ? "[" : " or [") + std::to_string(r) + ", " + std::to_string(n_c) + "]";
  std::string got = "[";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
  got += "]";
  if (a.ndim() != 2 || a.shape(1) != n_c ||
      std::find(allowed.begin(), allowed.end(), static_cast<i64>(a.shape(0))) == allowed.end())
    fail(what, "", "returned shape " + got + ", expected " + want);
  rows = a.shape(0);
  return std::vector<float>(a.data(), a.data() + a.size());
}

class PyScoreRule : public ScoredRule {
 public:
  PyScoreRule(std::string name, PyFn fn, ScoreRuleOptions opt) : ScoredRule(name), name_(name), fn_(std::move(fn)), opt_(opt) {}
  bool attention_like() const override { return opt_.attention; }
  UnitScores scores(const RuleInput& in) const override {
    const LayerData& d = *in.data;
    const int H = d.num_heads, Hkv = d.num_kv_heads, G = H / Hkv;
    const std::string what = where(name_, in.layer) + ": scores";
    std::vector<float> raw;
    i64 rows = 0;
    {
      py::gil_scoped_acquire gil;
      const py::object res = call(fn_, name_, in.layer, make_view(in, opt_.window));
      raw = as_matrix(res, what, in.n_c, opt_.gqa == "query" ? std::vector<i64>{H} : std::vector<i64>{Hkv, H}, rows);
    }
    for (std::size_t i = 0; i < raw.size(); ++i)
      if (std::isnan(raw[i]))
        fail(what, "", "NaN at [" + std::to_string(i / in.n_c) + ", " + std::to_string(i % in.n_c) +
                           "] (use -inf for tokens never worth keeping)");
    const bool query = opt_.gqa == "query";
    UnitScores s(query ? GqaMode::query : GqaMode::kv, query ? H : Hkv, in.n_c);
    if (query || rows == Hkv || G == 1) {
      s.score = std::move(raw);
    } else {  // per query head scores, reduced to the KV head like kvsim's own rules
      GqaChoice g;
      g.op = opt_.gqa == "max" ? kernels::GroupOp::max : opt_.gqa == "sum" ? kernels::GroupOp::sum : kernels::GroupOp::mean;
      reduce_heads(raw.data(), H, G, in.n_c, in.n_c, g, s.score.data(), in.n_c);
    }
    s.protect_range(in.n_c - std::min<i64>(opt_.protect_window, in.n_c), in.n_c);
    return s;
  }

 private:
  std::string name_;
  PyFn fn_;
  ScoreRuleOptions opt_;
};

class PyMaskRule : public Rule {
 public:
  PyMaskRule(std::string name, PyFn fn, long long window) : name_(std::move(name)), fn_(std::move(fn)), window_(window) {}
  std::string spec() const override { return name_; }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    const LayerData& d = *in.data;
    std::vector<Selection> out;
    for (const Budget& b : budgets) {
      const std::string what = where(name_, in.layer) + ": kept mask for budget " + b.text;
      std::vector<float> raw;
      i64 rows = 0;
      {
        py::gil_scoped_acquire gil;
        const py::object res = call(fn_, name_, in.layer, make_view(in, window_),
                                    BudgetView{b.text, b.tokens_for(in.n_c), b.kept_fraction(in.n_c)});
        raw = as_matrix(res, what, in.n_c, {d.num_kv_heads, d.num_heads}, rows);
      }
      Selection s(rows == d.num_kv_heads ? GqaMode::kv : GqaMode::query, static_cast<int>(rows), in.n_c);
      for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] != 0.0f && raw[i] != 1.0f)
          fail(what, "", "values must be 0/1 or booleans, found " + std::to_string(raw[i]) + " at [" +
                             std::to_string(i / in.n_c) + ", " + std::to_string(i % in.n_c) + "]");
        s.kept[i] = raw[i] != 0.0f;
      }
      // A mask may keep fewer tokens than the budget, never more: matched budgets are the point.
      const i64 budget_tokens = b.tokens_for(in.n_c);
      for (i64 u = 0; u < rows; ++u) {
        i64 kept = 0;
        for (i64 j = 0; j < in.n_c; ++j) kept += s.kept[static_cast<std::size_t>(u * in.n_c + j)];
        if (kept > budget_tokens)
          fail(what, "", "row " + std::to_string(u) + " keeps " + std::to_string(kept) + " tokens, more than the " +
                             std::to_string(budget_tokens) + " of the budget");
      }
      out.push_back(std::move(s));
    }
    return out;
  }

 private:
  std::string name_;
  PyFn fn_;
  long long window_;
};

// kvsim's own scores of a built-in scorer for the layer a Python rule is looking at.
py::array builtin_scores(const std::string& spec, const LayerView& v) {
  std::unique_ptr<Rule> rule;
  std::unique_ptr<LayerCache> cache;
  UnitScores s;
  {
    py::gil_scoped_release release;
    rule = make_rule(spec);
    const auto* scored = dynamic_cast<const ScoredRule*>(rule.get());
    if (!scored) fail(spec, "", "does not produce per-token scores");
    cache = std::make_unique<LayerCache>(*v.meta, *v.data, v.n_c, v.eval_rows);
    s = scored->scores(RuleInput::of_layer(*v.meta, v.layer, v.data, v.n_c, v.eval_rows, cache.get()));
  }
  py::array_t<float> out(std::vector<py::ssize_t>{s.units, static_cast<py::ssize_t>(s.n_c)});
  std::copy(s.score.begin(), s.score.end(), out.mutable_data());
  return out;
}

// Records the new owner of a name; returns its token and whether it replaced another rule's.
Registration remember(const std::string& name) {
  std::lock_guard lock(g_names_mu);
  auto [it, fresh] = g_owners.try_emplace(name, 0);
  it->second = ++g_next_token;
  return {it->second, !fresh};
}

}  // namespace

Registration register_score_rule(const std::string& name, py::function fn, const ScoreRuleOptions& opt) {
  if (opt.gqa != "mean" && opt.gqa != "max" && opt.gqa != "sum" && opt.gqa != "query")
    fail("ScoreRule '" + name + "'", "gqa", "must be mean, max, sum or query, got '" + opt.gqa + "'");
  if (opt.protect_window < 0 || opt.window < 1) fail("ScoreRule '" + name + "'", "window", "must be positive");
  PyFn f = hold(std::move(fn));
  RuleInfo info{name, "Python ScoreRule", {}, /*in_all=*/false, /*example=*/name};
  register_runtime_rule(info, [name, f, opt](SpecReader& r) -> std::unique_ptr<Rule> {
    return std::make_unique<PyScoreRule>(name, f, opt);
  });
  return remember(name);
}

Registration register_mask_rule(const std::string& name, py::function fn, long long window) {
  PyFn f = hold(std::move(fn));
  RuleInfo info{name, "Python MaskRule", {}, /*in_all=*/false, /*example=*/name};
  register_runtime_rule(info, [name, f, window](SpecReader&) -> std::unique_ptr<Rule> {
    return std::make_unique<PyMaskRule>(name, f, window);
  });
  return remember(name);
}

bool unregister_python_rule(const std::string& name, std::uint64_t token) {
  std::lock_guard lock(g_names_mu);
  auto it = g_owners.find(name);
  if (it == g_owners.end() || it->second != token) return false;  // another rule owns the name now
  g_owners.erase(it);
  return unregister_runtime_rule(name);
}

void unregister_all_python_rules() {
  std::map<std::string, std::uint64_t> owners;
  {
    std::lock_guard lock(g_names_mu);
    owners.swap(g_owners);
  }
  for (const auto& [name, token] : owners) unregister_runtime_rule(name);
}

void bind_rules(py::module_& m) {
  // Leaked on purpose: a static py::object would be destroyed after the interpreter.
  auto* rule_error = new py::exception<Error>(m, "RuleError", PyExc_RuntimeError);
  g_rule_error = rule_error->ptr();
  py::class_<LayerView>(m, "LayerView", "One layer as a Python rule sees it (read-only numpy arrays).")
      .def_readonly("layer", &LayerView::layer, "trace layer index")
      .def_readonly("n_c", &LayerView::n_c, "compression point: tokens [0, n_c) are compressible")
      .def_property_readonly("k", &LayerView::k, "compressible keys [num_kv_heads, n_c, head_dim] (post-RoPE)")
      .def_property_readonly("v", &LayerView::v, "compressible values [num_kv_heads, n_c, head_dim]")
      .def_property_readonly("keys", &LayerView::keys, "every key [num_kv_heads, seq_len, head_dim]")
      .def_property_readonly("values", &LayerView::values, "every value [num_kv_heads, seq_len, head_dim]")
      .def_property_readonly("q", &LayerView::q, "every stored query [num_heads, len(q_pos), head_dim]")
      .def_property_readonly("q_pos", &LayerView::q_pos, "positions of the rows of q")
      .def_property_readonly("q_window", &LayerView::q_window,
                             "queries of the observation window [num_heads, window, head_dim] (positions n_c-window .. n_c-1)")
      .def_property_readonly("q_eval", &LayerView::q_eval, "evaluation queries [num_heads, n_eval, head_dim]")
      .def_property_readonly("eval_pos", &LayerView::eval_pos, "positions of the evaluation queries")
      .def_property_readonly("positions", &LayerView::positions, "positions of the compressible tokens, 0 .. n_c-1")
      .def_property_readonly("o_proj", &LayerView::o_proj, "output projection [hidden, num_heads*head_dim] or None")
      .def_property_readonly("num_heads", [](const LayerView& v) { return v.data->num_heads; })
      .def_property_readonly("num_kv_heads", [](const LayerView& v) { return v.data->num_kv_heads; })
      .def_property_readonly("head_dim", [](const LayerView& v) { return v.data->head_dim; })
      .def_property_readonly("attn_scale", [](const LayerView& v) { return v.meta->logits().scale; })
      .def("__repr__", [](const LayerView& v) {
        return "<kvsim.LayerView layer " + std::to_string(v.layer) + ", n_c " + std::to_string(v.n_c) + ">";
      });
  py::class_<BudgetView>(m, "BudgetView", "The budget a MaskRule is asked for.")
      .def_readonly("text", &BudgetView::text)
      .def_readonly("tokens", &BudgetView::tokens, "nominal kept tokens per unit, protected included")
      .def_readonly("fraction", &BudgetView::fraction, "kept share of n_c")
      .def("__repr__", [](const BudgetView& b) { return "<kvsim.BudgetView " + b.text + ": " + std::to_string(b.tokens) + " tokens>"; });
  // Registration: (token, replaced) -> the rule object keeps the token, so that unregister()
  // removes its own registration only; replaced says it took the name from another Python rule.
  m.def("_register_score_rule",
        [](const std::string& name, py::function fn, const std::string& gqa, long long protect, long long window,
           bool attention) {
          const Registration r = register_score_rule(name, std::move(fn), {gqa, protect, window, attention});
          return py::make_tuple(r.token, r.replaced);
        },
        py::arg("name"), py::arg("fn"), py::arg("gqa"), py::arg("protect_window"), py::arg("window"),
        py::arg("attention"));
  m.def("_register_mask_rule",
        [](const std::string& name, py::function fn, long long window) {
          const Registration r = register_mask_rule(name, std::move(fn), window);
          return py::make_tuple(r.token, r.replaced);
        },
        py::arg("name"), py::arg("fn"), py::arg("window"));
  m.def("_unregister_rule", &unregister_python_rule, py::arg("name"), py::arg("token"));
  m.def("scores", &builtin_scores, py::arg("spec"), py::arg("layer"),
        "the per-token scores [units, n_c] a built-in scorer (spec string) gives this layer: build on kvsim's "
        "scorers inside a Python rule");
  m.def("_unregister_all_rules", &unregister_all_python_rules);
}

}  // namespace kvsim::python
