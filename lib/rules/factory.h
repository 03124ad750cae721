#pragma once
// Spec strings -> rules, e.g. "critical(ada(snapkv(window=32,kernel=7,pool=max)),alpha=0.5)".
#include <memory>
#include <string>
#include <vector>

#include "rules/rule.h"

namespace kvsim {

// Throws kvsim::Error naming the spec and the offending part.
std::unique_ptr<Rule> make_rule(const std::string& spec);
// "a;b;c" -> rules. "default" expands to every rule that needs only the observation window
// and evaluation queries (plus critical(ada(snapkv))); "all" to every registered rule plus
// the composite and step-wise variants (needs every prompt query stored).
std::vector<std::unique_ptr<Rule>> make_rules(const std::string& specs);

struct RuleParam {
  std::string name, type, default_value, help;
};
struct RuleInfo {
  std::string name, summary;
  std::vector<RuleParam> params;
  // Part of make_rules("default")? Off for rules whose defaults need data most traces lack
  // (e.g. chunk(snapkv) needs the queries at every chunk end).
  bool in_all = true;
  // A spec that builds the rule when its name alone does not (a required parameter, e.g.
  // external(name=...)); such rules are left out of "all". Empty: the name alone builds it.
  std::string example;
};
// For `kvsim rules`.
std::vector<RuleInfo> rule_catalogue();

}  // namespace kvsim
