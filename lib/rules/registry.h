#pragma once
// Rule registry. Each rule file registers itself with a static KVSIM_RULE(...) object; the
// kvsim_rules library is linked whole-archive so those objects are never dropped.
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rules/factory.h"
#include "rules/rule.h"
#include "rules/spec.h"

namespace kvsim {

// Typed, checked access to one spec node's parameters. Every get_* records the parameter
// (with its default) so unknown parameters are rejected by finish() and so the canonical
// spec string lists every parameter.
class SpecReader {
 public:
  explicit SpecReader(const Spec& spec);
  const Spec& spec() const { return spec_; }
  long long get_int(const std::string& name, long long def, long long min, long long max);
  // The pooling kernel "kernel": an odd integer in [1, 1001] (rules doc 1.5).
  int get_pool_kernel(int def);
  double get_double(const std::string& name, double def, double min, double max);
  bool get_bool(const std::string& name, bool def);
  // Free text (a name, a file path); `required` errors when absent, else def.
  std::string get_string(const std::string& name, const std::string& def, bool required = false);
  std::string get_choice(const std::string& name, const std::string& def,
                         const std::vector<std::string>& choices);
  // Positional nested rule number i (built through the registry); throws if absent.
  std::unique_ptr<Rule> get_rule(std::size_t i);
  // Nested rule i if present, else the rule built from default_spec.
  std::unique_ptr<Rule> get_rule_or(std::size_t i, const std::string& default_spec);
  // Throws on unknown parameters or unused positional arguments.
  void finish();
  // Canonical spec of what was read so far: name(base specs..., every parameter=value read,
  // defaults included). Call after the last get_*; it is what Rule::spec() returns.
  std::string canonical() const;
  // Throws kvsim::Error("<name>: <what>"); make_rule prefixes the whole spec text.
  [[noreturn]] void error(const std::string& what) const;

 private:
  const std::string* find(const std::string& name);
  const Spec& spec_;
  std::vector<std::string> used_params_;
  std::size_t used_args_ = 0;
  std::vector<std::string> canon_args_;
  std::vector<std::pair<std::string, std::string>> canon_params_;
};

using RuleBuilder = std::function<std::unique_ptr<Rule>(SpecReader&)>;

struct RuleRegistrar {
  RuleRegistrar(RuleInfo info, RuleBuilder build);
};

// Rules registered at run time (the Python module's ScoreRule / MaskRule): a built-in name or a
// name that is not an identifier is refused (kvsim::Error); registering a runtime name again
// replaces it. unregister returns false for unknown or built-in names.
void register_runtime_rule(RuleInfo info, RuleBuilder build);
bool unregister_runtime_rule(const std::string& name);

// Builds a rule from a parsed spec through the registry (used by make_rule and get_rule).
std::unique_ptr<Rule> build_rule(const Spec& spec);
// Names of every registered rule, sorted.
std::vector<std::string> registered_rule_names();

}  // namespace kvsim

#define KVSIM_RULE_CONCAT2(a, b) a##b
#define KVSIM_RULE_CONCAT(a, b) KVSIM_RULE_CONCAT2(a, b)
// KVSIM_RULE(RuleInfo{...}, [](SpecReader& r) { ... return std::make_unique<X>(...); });
#define KVSIM_RULE(info, builder) \
  static ::kvsim::RuleRegistrar KVSIM_RULE_CONCAT(kvsim_rule_registrar_, __LINE__)(info, builder)
