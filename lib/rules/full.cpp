// full: keeps every token (the reference; zero perturbation). Budgets are ignored.
#include "rules/registry.h"

namespace kvsim {
namespace {

class FullRule : public Rule {
 public:
  std::string spec() const override { return "full"; }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    std::vector<Selection> out;
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      Selection s(GqaMode::kv, in.data->num_kv_heads, in.n_c);
      std::fill(s.kept.begin(), s.kept.end(), std::uint8_t{1});
      out.push_back(std::move(s));
    }
    return out;
  }
};

KVSIM_RULE((RuleInfo{"full", "keep every token (full cache; the budget is ignored)", {}}),
           [](SpecReader&) -> std::unique_ptr<Rule> { return std::make_unique<FullRule>(); });

}  // namespace
}  // namespace kvsim
