#pragma once
// A selection rule: score -> allocate -> select, built from a spec string (rules/factory.h).
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "rules/budget.h"
#include "core/selection.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

class WindowAttentionMemo;  // rules/window_attention.h

class LayerCache;

// Everything a rule may read for one layer.
struct RuleInput {
  const TraceMeta* meta = nullptr;
  int layer = 0;
  const LayerData* data = nullptr;  // q rows are those of meta->q_pos (all stored queries)
  // Owner of *data when the caller shares it (the replay does): lets a rule hand out views that
  // outlive select(), e.g. numpy arrays given to a Python rule. May be null.
  std::shared_ptr<const LayerData> data_owner;
  i64 n_c = 0;                      // compression point: tokens [0, n_c) are compressible
  std::vector<i64> eval_rows;       // rows of data->q that are evaluation queries (pos >= n_c)
  LayerCache* cache = nullptr;      // shared per-layer computations (attention/layer_cache.h)
  WindowAttentionMemo* window_memo = nullptr;  // optional: shares observation-window attention between rules
  // A cross-layer rule's counts for this layer (LayerPlanner): [budget][unit] kept tokens,
  // handed in by the replay after every layer was observed; null otherwise.
  const std::vector<std::vector<i64>>* planned = nullptr;
  // A decode-protocol view (replay/decode_view.h): the cache as it stands during generation,
  // compacted. positions[g][i] is the model position (for RoPE) of token i of view KV head g;
  // absent (when units kept different numbers of tokens) marks [unit][n_c] tokens evicted from
  // that unit but kept by another, which the rule must not keep. Both null outside a decode step.
  const std::vector<std::vector<i64>>* positions = nullptr;
  const std::vector<std::uint8_t>* absent = nullptr;

  // The RoPE position of token `index` of KV head g: the model position in a decode view (past
  // its tokens, counting on from the last one), else the index itself.
  i64 rope_position(int g, i64 index) const {
    if (!positions) return index;
    const auto& p = (*positions)[static_cast<std::size_t>(g)];
    const i64 n = static_cast<i64>(p.size());
    return index < n ? p[static_cast<std::size_t>(index)] : p.back() + (index - n + 1);
  }

  // One shared layer of a trace, as the replay and the Python bindings hand it to rules.
  static RuleInput of_layer(const TraceMeta& meta, int layer, std::shared_ptr<const LayerData> data, i64 n_c,
                            std::vector<i64> eval_rows, LayerCache* cache, WindowAttentionMemo* memo = nullptr) {
    RuleInput in;
    in.meta = &meta;
    in.layer = layer;
    in.data = data.get();
    in.data_owner = std::move(data);
    in.n_c = n_c;
    in.eval_rows = std::move(eval_rows);
    in.cache = cache;
    in.window_memo = memo;
    return in;
  }
};

// Cross-layer allocation (rules doc 1.4): a rule whose kept counts depend on every layer of the
// run (KVCompose's layer curves, DuoAttention's global head ranking) hands the replay a planner.
// The replay shows it every replayed layer first (observe, in the run's layer order), asks for
// the plan, then runs select() per layer with RuleInput::planned set to that layer's counts.
class LayerPlanner {
 public:
  virtual ~LayerPlanner() = default;
  virtual void observe(const RuleInput& in) = 0;
  // [budget] -> layer -> [unit] kept tokens, for every observed layer.
  virtual std::vector<std::map<int, std::vector<i64>>> plan(const std::vector<Budget>& budgets) const = 0;
};

class Rule {
 public:
  virtual ~Rule() = default;
  // Canonical spec string with every parameter spelled out: make_rule(spec()) rebuilds it.
  virtual std::string spec() const = 0;
  // One Selection per budget, in order. Budgets of one rule share its scores.
  virtual std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const = 0;
  // Whether select() takes threshold budgets (thr=X, rules doc 1.4): plain scorers only.
  virtual bool takes_threshold() const { return false; }
  // Whether a step-wise selection's per-query masks evict (H2O, TOVA step-wise: a token a query's
  // cache lacks is gone) or only pick each query's keys from a cache that keeps every token
  // (Quest): under the decode protocol the next cut then starts from the whole cache.
  virtual bool per_query_evicts() const { return true; }
  // Non-null for rules that allocate across layers (see LayerPlanner); a fresh planner per run.
  virtual std::unique_ptr<LayerPlanner> layer_planner() const { return nullptr; }
  // Under the decode protocol (rules doc 1.9) a cross-layer rule keeps the allocation it planned
  // at n_0: its per-unit counts at a later cut, from this layer's planned counts at n_0, the
  // per-unit budget then (`nominal`) and now (`keep`), and what each unit holds. Default: each
  // unit keeps its planned share of the budget, at most what it holds.
  virtual std::vector<i64> decode_counts(const std::vector<i64>& planned, i64 n0, i64 nominal, i64 keep,
                                         const std::vector<i64>& held) const;
};

// in.planned, or throws naming the rule: a cross-layer rule selected outside a replay.
const std::vector<std::vector<i64>>& require_plan(const RuleInput& in, const std::string& spec,
                                                  std::size_t n_budgets);

// Throws naming the rule and the budget when budgets hold a threshold the rule does not take
// (call before select(): rules that count tokens would otherwise fail inside parallel loops).
void check_threshold_budgets(const Rule& rule, const std::vector<Budget>& budgets);

}  // namespace kvsim
