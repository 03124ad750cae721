#pragma once
// The derived numbers the report shows, computed only from metrics.csv rows (the tests recompute
// every one of them independently from the CSV): per rule x budget means, bound tightness,
// CriticalKV head win rates (spec section 4.1) and the Ada-KV allocation effect (4.2).
#include <string>
#include <vector>

#include "report/replay_outputs.h"

namespace kvsim::report {

// "critical(X,alpha=0.5)" with wrapper "critical" -> "X"; "" when spec is not wrapper(...).
// The base is the first top-level argument, exactly as written inside the parentheses.
std::string wrapped_base(const std::string& spec, const std::string& wrapper);

// Means over layers of the layer rows (head -1) for one rule and budget, eval = out.eval.
struct RuleBudgetStats {
  std::string rule, budget;
  int n_layers = 0;
  double budget_tokens = 0, kept_tokens = 0, retained_mass = 0, pert_l1 = 0, rel_pert_l1 = 0, bound_ada = 0,
         bound_critical = 0;
};
std::vector<RuleBudgetStats> rule_budget_stats(const ReplayOutput& out);

// Per layer, over every head row (all rules and budgets) with a positive bound: the ratio
// measured pert_l1 / bound. Median is the mean of the two middle values for even counts.
struct LayerTightness {
  int layer = 0;
  long long n_critical = 0, n_ada = 0;  // rows with bound > 0
  double median_critical = 0, mean_critical = 0, max_critical = 0;
  double median_ada = 0, mean_ada = 0, max_ada = 0;
  long long exceed_critical = 0, exceed_ada = 0;  // rows with pert_l1 > bound (1e-5 relative slack)
};
std::vector<LayerTightness> layer_tightness(const ReplayOutput& out);
// The head-row ratios themselves (for histograms), per layer in out.layers order.
std::vector<std::vector<double>> tightness_ratios(const ReplayOutput& out, bool critical_bound);

// CriticalKV vs its base rule at the same budget. layer = -1: all layers together.
struct WinRate {
  std::string rule, base, budget;
  int layer = -1;
  long long heads = 0, wins = 0, ties = 0;  // wins: rule's head pert_l1 < base's
  double rate = 0;                          // wins / heads
  double pert_rule = 0, pert_base = 0;      // layer rows' pert_l1 (layer -1: sum over layers)
  double cumulative_advantage = 0;          // sum over layers <= layer of (pert_base - pert_rule)
};
std::vector<WinRate> critical_win_rates(const ReplayOutput& out);

// Ada-KV (adaptive) vs its base rule (uniform allocation) at the same budget, per layer.
struct AdaEffect {
  std::string rule, base, budget;
  int layer = 0;
  double sum_f_uniform = 0, sum_f_ada = 0;   // sum over heads of the head rows' retained_mass
  double bound_uniform = 0, bound_ada = 0;   // layer rows' bound_ada
  double pert_uniform = 0, pert_ada = 0;     // layer rows' pert_l1
};
std::vector<AdaEffect> ada_effects(const ReplayOutput& out);

// kept_tokens of the head rows of one rule and budget (the per-head budget histogram).
std::vector<double> head_kept_tokens(const ReplayOutput& out, const std::string& rule, const std::string& budget);

}  // namespace kvsim::report
