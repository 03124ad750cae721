// global(base): one budget shared by every layer of the run (Layer-DefensiveKV's inter-layer
// allocation, FFY0/DefensiveKV EfficientAdaGlobalScorerPress; the layer-level counterpart of
// Ada-KV's head-level one), rules doc 2.32. Every (layer, unit, token) score of the base rule is
// ranked together; the global top N (the budget's share of all of them, protected tokens
// included and always kept) decides every unit's count, so layers whose scores are large keep
// more. Meaningful when the base's scores are on one scale across layers (attention masses:
// snapkv, defensive, ...), which attention_like() requires.
#include <algorithm>

#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

class GlobalPlanner : public LayerPlanner {
 public:
  GlobalPlanner(const ScoredRule& base, std::string spec) : base_(base), spec_(std::move(spec)) {}
  void observe(const RuleInput& in) override {
    const UnitScores s = base_.scores(in);
    Layer& l = layers_[in.layer];
    l.units = s.units;
    l.n_protected = s.n_protected;
    n_c_ = s.n_c;
    for (int u = 0; u < s.units; ++u) {
      const std::vector<float> lin = s.linear_scores(u);  // one scale across layers, also for log-space bases
      for (i64 j = 0; j < s.n_c; ++j)
        if (!s.protect[j]) l.scores.push_back(lin[j]);
    }
  }

  std::vector<std::map<int, std::vector<i64>>> plan(const std::vector<Budget>& budgets) const override {
    // Every unprotected entry, layer after layer ([unit][token] within one), and where each
    // layer's entries start.
    std::vector<float> value;
    std::vector<int> layers;
    std::vector<i64> start;
    i64 protected_total = 0;
    for (const auto& [layer, l] : layers_) {
      layers.push_back(layer);
      start.push_back(static_cast<i64>(value.size()));
      value.insert(value.end(), l.scores.begin(), l.scores.end());
      protected_total += l.n_protected * l.units;
    }
    const int units = layers_.empty() ? 0 : layers_.begin()->second.units;
    std::vector<i64> take;  // per budget: the unprotected entries it keeps
    for (const Budget& b : budgets) {
      const i64 total = b.share_across(layers, n_c_ * units, n_c_);  // of every (layer, unit, token)
      if (total < protected_total)
        fail(spec_, "budget " + b.text,
             std::to_string(total) + " kept tokens over the run's layers and heads are fewer than their " +
                 std::to_string(protected_total) + " protected ones (observation window / sinks)");
      take.push_back(std::min<i64>(total - protected_total, static_cast<i64>(value.size())));
    }
    // Best first (kernels::topk: ties to the earlier layer, unit, token), as deep as the largest budget.
    std::vector<i64> order(take.empty() ? 0 : *std::max_element(take.begin(), take.end()));
    order.resize(kernels::topk(value.data(), static_cast<i64>(value.size()), static_cast<i64>(order.size()),
                               order.data()));
    std::vector<std::map<int, std::vector<i64>>> out;
    for (const i64 t : take) {
      std::map<int, std::vector<i64>> plan;
      for (const auto& [layer, l] : layers_) plan[layer].assign(l.units, l.n_protected);
      for (i64 k = 0; k < std::min(t, static_cast<i64>(order.size())); ++k) {
        const std::size_t li = static_cast<std::size_t>(std::upper_bound(start.begin(), start.end(), order[k]) -
                                                        start.begin()) - 1;
        const Layer& l = layers_.at(layers[li]);
        ++plan[layers[li]][(order[k] - start[li]) / std::max<i64>(n_c_ - l.n_protected, 1)];
      }
      out.push_back(std::move(plan));
    }
    return out;
  }

 private:
  struct Layer {
    int units = 0;
    i64 n_protected = 0;
    std::vector<float> scores;  // [unit][unprotected token]
  };
  const ScoredRule& base_;
  std::string spec_;
  i64 n_c_ = 0;
  std::map<int, Layer> layers_;
};

class GlobalRule : public ScoredRule {
 public:
  GlobalRule(std::string spec, std::unique_ptr<ScoredRule> base) : ScoredRule(std::move(spec)), base_(std::move(base)) {}
  bool plain() const override { return false; }
  bool attention_like() const override { return true; }
  std::string wrapper_kind() const override { return "global"; }
  UnitScores scores(const RuleInput& in) const override { return base_->scores(in); }
  std::unique_ptr<LayerPlanner> layer_planner() const override {
    return std::make_unique<GlobalPlanner>(*base_, spec());
  }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    return select_planned(in, budgets.size());
  }

 private:
  std::unique_ptr<ScoredRule> base_;
};

KVSIM_RULE((RuleInfo{"global",
                     "one budget over every layer of the run (Layer-DefensiveKV's inter-layer allocation): the "
                     "base's scores of all layers and heads ranked together, each unit keeping its entries of the "
                     "global top",
                     {{"base", "rule", "snapkv", "plain attention scorer (positional argument)"}},
                     /*in_all=*/false}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = require_scored(r.get_rule_or(0, "snapkv"), "global");
             if (!base->attention_like() || !base->plain())
               r.error("base rule '" + base->spec() +
                       "' must be a plain attention scorer (snapkv, defensive, tova, ...): its scores are ranked "
                       "across layers");
             return std::make_unique<GlobalRule>(r.canonical(), std::move(base));
           });

}  // namespace
}  // namespace kvsim
