#pragma once
// Score-based rules (spec "score -> allocate -> select"). A ScoredRule produces per-unit scores
// over the compressible span plus an explicit protected set (window, sinks); wrappers change
// one stage each:
//   scores        snapkv, knorm, random, streaming, oracle, ...     (plain scorers)
//   layer budget  pyramid(base)                                      per-layer kept count
//   unit budgets  ada(base)                                          per-head counts in a layer
//   select        critical(base)                                     two-stage kept sets
// BUDGET CONVENTION (kvpress, spec 1.4 item 1): a budget B is the number of kept tokens per
// selection unit inside [0, n_c) INCLUDING protected tokens, so every rule is compared at
// matched kept-token counts. A unit whose count is below its protected count is an error
// naming the rule, the budget and the protected count (no silent clamp).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rules/rule.h"

namespace kvsim {

// Scores of one layer. Higher score = more worth keeping. Protected entries' scores are
// ignored (never read by selection).
struct UnitScores {
  GqaMode mode = GqaMode::kv;
  int units = 0;
  i64 n_c = 0;                          // length of the scored span
  std::vector<float> score;             // [units][n_c]
  std::vector<std::uint8_t> protect;    // [n_c], 1 = always kept by every unit
  i64 n_protected = 0;

  UnitScores() = default;
  UnitScores(GqaMode m, int n_units, i64 n) : mode(m), units(n_units), n_c(n), score(n_units * n, 0.0f), protect(n, 0) {}
  float* unit(int u) { return score.data() + u * n_c; }
  const float* unit(int u) const { return score.data() + u * n_c; }
  void protect_range(i64 begin, i64 end);  // marks [begin, end) protected, updates n_protected
};

// Ranks the unprotected positions of one unit: up to k indices, best first (higher score,
// ties to the lower position, via kernels::topk). Returns the indices.
std::vector<i64> rank_unprotected(const float* score, const std::uint8_t* protect, i64 n, i64 k);

// Number of selection units of a layer for a GQA mode.
int units_for(GqaMode mode, const LayerData& d);

class ScoredRule : public Rule {
 public:
  explicit ScoredRule(std::string spec) : spec_(std::move(spec)) {}
  std::string spec() const override { return spec_; }

  // Scores for the span [0, in.n_c).
  virtual UnitScores scores(const RuleInput& in) const { return scores_range(in, 0, in.n_c); }
  // Scores of the sub-span [begin, end) treated as if it were the whole context with
  // compression point `end` (used by chunk()); positions are local (0 = begin).
  virtual UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const;
  // True for plain scorers; false for wrappers (pyramid, ada, critical).
  virtual bool plain() const { return true; }
  // True if scores estimate attention mass (Ada-KV / CriticalKV / PyramidKV may wrap it).
  virtual bool attention_like() const { return false; }
  // Kind of wrapper, for nesting checks: "" for plain scorers, else "pyramid", "ada", "critical".
  virtual std::string wrapper_kind() const { return ""; }

  // Per-unit kept tokens of this layer for the nominal per-unit budget B (incl. protected).
  virtual i64 layer_budget(const RuleInput& in, const UnitScores& s, i64 B) const;
  // Per-unit counts (incl. protected) for a layer budget; uniform by default.
  virtual std::vector<i64> unit_budgets(const RuleInput& in, const UnitScores& s, i64 layer_budget) const;
  // Kept sets for several count vectors (one per budget) sharing one ranking; `what` names
  // each budget for error messages.
  virtual std::vector<Selection> select_counts(const RuleInput& in, const UnitScores& s,
                                               const std::vector<std::vector<i64>>& counts) const;

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override;

 private:
  std::string spec_;
};

// Cast a built base rule to a ScoredRule or throw "<who>: base rule '<spec>' <why>".
std::unique_ptr<ScoredRule> require_scored(std::unique_ptr<Rule> base, const std::string& who);

}  // namespace kvsim
