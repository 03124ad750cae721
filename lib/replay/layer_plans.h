#pragma once
// The allocations of cross-layer rules (rules/rule.h LayerPlanner): every layer read and observed
// once, then each planner allocates every budget. The replay, the sweep's units and the Python
// decode API (which hands the plan to the closed loop's cuts) all plan this way.
#include <map>
#include <memory>
#include <vector>

#include "replay/protocol.h"
#include "rules/budget.h"
#include "rules/rule.h"
#include "trace/trace_meta.h"

namespace kvsim {

class TraceReader;

// [rule][budget] -> layer -> [unit] kept tokens at n_c; empty for a rule without a planner.
using LayerPlans = std::vector<std::vector<std::map<int, std::vector<i64>>>>;

LayerPlans plan_layers(const TraceMeta& meta, const Protocol& protocol, const TraceReader& reader,
                       const std::vector<int>& layers, const std::vector<const Rule*>& rules,
                       const std::vector<Budget>& budgets);

// One rule's plan of every layer of the trace for one budget (layer -> [unit] kept tokens); empty
// for a rule without a planner.
std::map<int, std::vector<i64>> plan_every_layer(const TraceMeta& meta, const Protocol& protocol,
                                                 const TraceReader& reader, const Rule& rule, const Budget& budget);

}  // namespace kvsim
