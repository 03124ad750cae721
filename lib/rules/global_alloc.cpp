// global(base): one budget shared by every layer of the run (Layer-DefensiveKV's inter-layer
// allocation, FFY0/DefensiveKV EfficientAdaGlobalScorerPress; the layer-level counterpart of
// Ada-KV's head-level one), rules doc 2.32. Every (layer, unit, token) score of the base rule is
// ranked together; the global top N (the budget's share of all of them, protected tokens
// included and always kept) decides every unit's count, so layers whose scores are large keep
// more. Meaningful when the base's scores are on one scale across layers (attention masses:
// snapkv, defensive, ...), which attention_like() requires.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
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
    // Every unprotected entry as (layer, unit), best first; ties to the earlier layer, unit, token.
    std::vector<float> value;
    std::vector<std::pair<int, int>> owner;
    i64 protected_total = 0, items = 0;
    for (const auto& [layer, l] : layers_) {
      const i64 free = n_c_ - l.n_protected;
      for (std::size_t k = 0; k < l.scores.size(); ++k) {
        value.push_back(l.scores[k]);
        owner.push_back({layer, static_cast<int>(static_cast<i64>(k) / std::max<i64>(free, 1))});
      }
      protected_total += l.n_protected * l.units;
      items += n_c_ * l.units;
    }
    std::vector<i64> order(value.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return value[a] > value[b]; });
    std::vector<std::map<int, std::vector<i64>>> out;
    for (const Budget& b : budgets) {
      i64 total = 0;  // the budget's share of every (layer, unit, token) entry
      if (b.per_layer.empty()) {
        total = b.share_of(items, n_c_);
      } else {
        for (const auto& [layer, l] : layers_) total += b.for_layer(layer).share_of(n_c_ * l.units, n_c_);
      }
      if (total < protected_total)
        fail(spec_, "budget " + b.text,
             std::to_string(total) + " kept tokens over the run's layers and heads are fewer than their " +
                 std::to_string(protected_total) + " protected ones (observation window / sinks)");
      std::map<int, std::vector<i64>> plan;
      for (const auto& [layer, l] : layers_) plan[layer].assign(l.units, l.n_protected);
      const i64 take = std::min<i64>(total - protected_total, static_cast<i64>(order.size()));
      for (i64 k = 0; k < take; ++k) ++plan[owner[order[k]].first][owner[order[k]].second];
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
    const auto& planned = require_plan(in, spec(), budgets.size());
    const UnitScores s = scores(in);
    std::vector<UnitCounts> counts;
    for (const auto& c : planned)
      counts.push_back({c, std::accumulate(c.begin(), c.end(), 0.0) / static_cast<double>(c.size()), 0});
    std::vector<Selection> out = select_counts(in, s, counts);
    for (std::size_t b = 0; b < out.size(); ++b) out[b].budget_tokens = std::llround(counts[b].exact);
    return out;
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
