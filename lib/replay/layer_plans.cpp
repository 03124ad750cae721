#include "replay/layer_plans.h"

#include "attention/layer_cache.h"
#include "trace/trace_reader.h"

namespace kvsim {

LayerPlans plan_layers(const TraceMeta& meta, const Protocol& p, const TraceReader& reader,
                       const std::vector<int>& layers, const std::vector<const Rule*>& rules,
                       const std::vector<Budget>& budgets) {
  LayerPlans plans(rules.size());
  std::vector<std::unique_ptr<LayerPlanner>> planners;
  bool any = false;
  for (const Rule* rule : rules) {
    planners.push_back(rule->layer_planner());
    any = any || planners.back();
  }
  if (!any) return plans;
  for (int l : layers) {
    const auto owner = std::make_shared<const LayerData>(reader.read_layer(l));
    LayerCache cache(meta, *owner, p.n_c, p.eval_rows, p.window_rows);
    const RuleInput in = RuleInput::of_layer(meta, l, owner, p.n_c, p.eval_rows, &cache);
    for (const auto& planner : planners)
      if (planner) planner->observe(in);
  }
  for (std::size_t r = 0; r < planners.size(); ++r)
    if (planners[r]) plans[r] = planners[r]->plan(budgets);
  return plans;
}

std::map<int, std::vector<i64>> plan_every_layer(const TraceMeta& meta, const Protocol& p, const TraceReader& reader,
                                                 const Rule& rule, const Budget& budget) {
  if (!rule.layer_planner()) return {};
  std::vector<int> layers(static_cast<std::size_t>(meta.num_layers));
  for (int l = 0; l < meta.num_layers; ++l) layers[static_cast<std::size_t>(l)] = l;
  return plan_layers(meta, p, reader, layers, {&rule}, {budget})[0][0];
}

}  // namespace kvsim
