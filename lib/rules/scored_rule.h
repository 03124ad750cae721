#pragma once
// Score-based rules (spec "score -> allocate -> select"). A ScoredRule produces per-unit scores
// over the compressible span plus an explicit protected set (window, sinks); wrappers change
// one stage each:
//   scores        snapkv, knorm, random, streaming, oracle, ...     (plain scorers)
//   layer budget  pyramid(base)                                      per-layer kept count
//   unit budgets  ada(base)                                          per-head counts in a layer
//   select        critical(base)                                     two-stage kept sets
// BUDGET CONVENTION (kvpress, rules doc 1.4 item 1): a budget B is the number of kept tokens per
// selection unit inside [0, n_c) INCLUDING protected tokens, so every rule is compared at
// matched kept-token counts. A unit whose count is below its protected count is an error
// naming the rule, the budget and the protected count (no silent clamp).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rules/query_scores.h"
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
  // Scores are natural logs of attention-like masses (ExpectedAttention's default: float32
  // softmax underflows to exact zeros and would rank by ties). Ranking is unaffected; wrappers
  // that combine scores arithmetically (CriticalKV's (s + eps) nu, ChunkKV's chunk means, Ada-KV
  // normalize) use linear_scores().
  bool log_space = false;

  UnitScores() = default;
  UnitScores(GqaMode m, int n_units, i64 n) : mode(m), units(n_units), n_c(n), score(n_units * n, 0.0f), protect(n, 0) {}
  float* unit(int u) { return score.data() + u * n_c; }
  const float* unit(int u) const { return score.data() + u * n_c; }
  void protect_range(i64 begin, i64 end);  // marks [begin, end) protected, updates n_protected
  // Unit u's scores as masses: exp(score) in log space (float32, so it may underflow), else as is.
  std::vector<float> linear_scores(int u) const;
};

// What allocation hands to selection for one budget.
struct UnitCounts {
  std::vector<i64> count;  // [units] kept tokens, protected ones included
  double exact = 0;        // the layer's budget before rounding (Budget::exact_tokens; pyramid: its count)
  i64 forced = 0;          // tokens per unit the allocator forced by score before its global cut
                           // (Ada-KV variant B safeguard), protected ones included; 0 = none
};

// Ranks the unprotected positions of one unit: up to k indices, best first (higher score,
// ties to the lower position, via kernels::topk). Returns the indices.
std::vector<i64> rank_unprotected(const float* score, const std::uint8_t* protect, i64 n, i64 k);

// Selection::tied_at_cut of one unit: among candidates (nullptr: all), the count of those whose
// score equals the lowest kept score, when an evicted candidate has that score too; else 0.
i64 ties_at_cut(const float* score, const std::uint8_t* candidate, const std::uint8_t* kept, i64 n);

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
  bool takes_threshold() const override { return plain(); }
  // True if scores estimate attention mass (Ada-KV / CriticalKV / PyramidKV may wrap it).
  virtual bool attention_like() const { return false; }
  // Kind of wrapper, for nesting checks: "" for plain scorers, else "pyramid", "ada", "critical".
  virtual std::string wrapper_kind() const { return ""; }
  // True when the scores aggregate per-query rows over observation queries (defensive(base) reads
  // them); false for scores without such a history (key norms, positions, ...).
  virtual bool has_query_rows() const { return false; }
  // Those rows for the span [begin, end); only called when has_query_rows().
  virtual QueryScoreRows query_rows(const RuleInput& in, i64 begin, i64 end) const;

  // Per-unit kept tokens of this layer for the nominal per-unit budget B (incl. protected);
  // exact = B before rounding (kvpress's n_c * (1 - cr)).
  virtual i64 layer_budget(const RuleInput& in, const UnitScores& s, i64 B, double exact) const;
  // Per-unit counts (incl. protected) for a layer budget; uniform by default.
  virtual std::vector<i64> unit_budgets(const RuleInput& in, const UnitScores& s, i64 layer_budget) const;
  // Tokens per unit an allocator forces by score for this layer budget (UnitCounts::forced).
  virtual i64 forced_per_unit(const RuleInput& in, const UnitScores& s, i64 layer_budget) const;
  // Kept sets for several budgets sharing one ranking.
  virtual std::vector<Selection> select_counts(const RuleInput& in, const UnitScores& s,
                                               const std::vector<UnitCounts>& counts) const;

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override;
  // A cross-layer rule's select: the planned per-unit counts of in.planned (LayerPlanner, one per
  // budget) ranked by scores(in); budget_tokens is the layer's mean planned count.
  std::vector<Selection> select_planned(const RuleInput& in, std::size_t n_budgets) const;

 private:
  std::string spec_;
};

// Cast a built base rule to a ScoredRule or throw "<who>: base rule '<spec>' <why>".
std::unique_ptr<ScoredRule> require_scored(std::unique_ptr<Rule> base, const std::string& who);

}  // namespace kvsim
