#pragma once
// SnapKV scorer (rules doc 2.6), exposed for tests and for wrappers.
#include "rules/gqa.h"
#include "rules/scored_rule.h"

namespace kvsim {

struct SnapKVParams {
  i64 window = 32;
  int kernel = 7;
  bool max_pool = true;
  bool mean = true;  // aggregate window queries by mean (else sum)
  GqaChoice gqa;
  bool pool_then_reduce = true;
};

// Pooling and group reduction of per-query-head window attention [num_heads][m] into
// [units][m], in the order of p.pool_then_reduce (rules doc 1.6; query mode only pools).
void snapkv_pool_reduce(const float* per_head, int num_heads, int group, i64 m, const SnapKVParams& p, float* out);

class SnapKVRule : public ScoredRule {
 public:
  SnapKVRule(std::string spec, SnapKVParams p);
  bool attention_like() const override { return true; }
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override;
  // The window queries' attention rows over the prefix (defensive(snapkv)).
  bool has_query_rows() const override { return true; }
  QueryScoreRows query_rows(const RuleInput& in, i64 begin, i64 end) const override;
  const SnapKVParams& params() const { return p_; }

 private:
  SnapKVParams p_;
};

}  // namespace kvsim
