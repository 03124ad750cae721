#pragma once
// Rules written in Python, registered in kvsim's rule registry under their own name, so that
// spec strings ("ada(myrule)", "critical(ada(myrule))") and every wrapper work on them:
//   ScoreRule: fn(layer) -> scores [units, n_c]; kvsim does the budget, the top-k, protected
//              tokens, the GQA reduction (per query head scores [H, n_c] are reduced to KV heads
//              by gqa=mean|max|sum, or kept per query head with gqa=query), and all metrics.
//   MaskRule:  fn(layer, budget) -> kept mask [units, n_c].
// `layer` is a LayerView (zero-copy, read-only numpy arrays). Exceptions raised by fn surface as
// kvsim.RuleError naming the rule and the layer, with the original as __cause__; wrong shapes and
// NaN scores are kvsim errors naming the rule, the layer and the problem.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace kvsim::python {

namespace py = pybind11;

struct ScoreRuleOptions {
  std::string gqa = "mean";  // mean | max | sum | query
  long long protect_window = 0;  // last tokens before n_c always kept
  long long window = 32;         // observation window queries given as layer.q_window
  bool attention = true;         // scores estimate attention mass: ada / critical / pyramid may wrap it
};

// A registration belongs to the rule object that made it (its token); registering a name another
// Python rule holds replaces that rule (re-running a notebook cell) and says so.
struct Registration {
  std::uint64_t token = 0;
  bool replaced = false;
};
Registration register_score_rule(const std::string& name, py::function fn, const ScoreRuleOptions& opt);
Registration register_mask_rule(const std::string& name, py::function fn, long long window);
// Removes the rule only while `token` still owns its name; false otherwise.
bool unregister_python_rule(const std::string& name, std::uint64_t token);
void unregister_all_python_rules();  // at interpreter exit, while Python still runs

// Binds LayerView, BudgetView, RuleError and the functions above into m.
void bind_rules(py::module_& m);

}  // namespace kvsim::python
