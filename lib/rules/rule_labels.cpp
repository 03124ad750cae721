#include "rules/rule_labels.h"

#include <cstdlib>

#include "core/error.h"
#include "rules/factory.h"
#include "rules/spec.h"

namespace kvsim {

namespace {

bool same_value(const std::string& a, const std::string& b) {
  if (a == b) return true;
  char *ea = nullptr, *eb = nullptr;
  const double x = std::strtod(a.c_str(), &ea), y = std::strtod(b.c_str(), &eb);
  return !a.empty() && !b.empty() && *ea == '\0' && *eb == '\0' && x == y;
}

void drop_defaults(Spec& s, const std::vector<RuleInfo>& catalogue) {
  for (auto& a : s.args) drop_defaults(a, catalogue);
  for (const auto& info : catalogue) {
    if (info.name != s.name) continue;
    std::vector<std::pair<std::string, std::string>> kept;
    for (const auto& [k, v] : s.params) {
      bool is_default = false;
      for (const auto& p : info.params)
        if (p.name == k && same_value(p.default_value, v)) is_default = true;
      if (!is_default) kept.emplace_back(k, v);
    }
    s.params = std::move(kept);
  }
}

}  // namespace

std::string short_rule_label(const std::string& spec) {
  try {
    static const std::vector<RuleInfo> catalogue = rule_catalogue();
    Spec s = parse_spec(spec);
    drop_defaults(s, catalogue);
    return print_spec(s);
  } catch (const Error&) {
    return spec;
  }
}

std::map<std::string, std::string> short_rule_labels(const std::vector<std::string>& specs) {
  std::map<std::string, std::string> label;
  std::map<std::string, int> uses;
  for (const auto& s : specs) ++uses[label[s] = short_rule_label(s)];
  for (auto& [spec, l] : label)
    if (uses[l] > 1) l = spec;
  return label;
}

}  // namespace kvsim
