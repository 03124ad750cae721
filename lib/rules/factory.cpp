// make_rule / make_rules over the registry (registry.cpp holds rule_catalogue()).
#include "rules/factory.h"

#include "core/error.h"
#include "rules/presets.h"
#include "rules/registry.h"
#include "rules/spec.h"

namespace kvsim {

std::unique_ptr<Rule> make_rule(const std::string& text) {
  Spec spec = parse_spec(expand_presets(text));  // its errors already name the spec and the column
  try {
    return build_rule(spec);
  } catch (const Error& e) {
    throw Error("rule spec '" + text + "': " + e.what());
  }
}

std::vector<std::unique_ptr<Rule>> make_rules(const std::string& specs) {
  std::vector<std::unique_ptr<Rule>> rules;
  std::size_t begin = 0;
  for (;;) {
    std::size_t end = specs.find(';', begin);
    std::string part = specs.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    std::size_t a = part.find_first_not_of(" \t\n"), b = part.find_last_not_of(" \t\n");
    part = a == std::string::npos ? "" : part.substr(a, b - a + 1);
    if (part.empty()) {
      if (end != std::string::npos || rules.empty())
        throw Error("rule list '" + specs + "': empty rule spec (specs are separated by ';')");
    } else if (part == "all" || part == "default") {
      // "default": every rule that runs on a trace storing only the observation window and
      // the evaluation queries. "all": every registered rule, including those that need every
      // prompt query (h2o, expected, chunk), plus the composites and step-wise variants the
      // papers evaluate.
      const bool all = part == "all";
      for (const auto& info : rule_catalogue())
        if ((all || info.in_all) && info.example.empty()) rules.push_back(make_rule(info.name));
      rules.push_back(make_rule("critical(ada(snapkv))"));  // CriticalAdaKV
      if (all) {
        rules.push_back(make_rule("ada(pyramid(snapkv))"));  // Ada-Pyramid
        rules.push_back(make_rule("h2o(variant=stepwise)"));
        rules.push_back(make_rule("tova(variant=stepwise)"));
      }
    } else {
      rules.push_back(make_rule(part));
    }
    if (end == std::string::npos) break;
    begin = end + 1;
  }
  return rules;
}

}  // namespace kvsim
