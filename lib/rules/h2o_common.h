#pragma once
// Helpers shared by the attention-driven rules of the H2O / TOVA / Quest / ExpectedAttention /
// ThinK files: query-row lookup with clear errors, GQA modes, subset softmax and top-k with an
// explicit protected set (rules doc 1.7).
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "rules/gqa.h"
#include "rules/rule.h"
#include "core/selection.h"

namespace kvsim::rules_more {


// Row of /q_pos holding position pos, or -1 when that query is not stored.
i64 q_row(const TraceMeta& meta, i64 pos);
// Rows for every position in [begin, end); throws "<trace>: q_pos: <rule> needs ..." otherwise.
std::vector<i64> require_q_rows(const TraceMeta& meta, i64 begin, i64 end, const std::string& rule,
                                const std::string& why);
// Checks meta/data/n_c of a RuleInput; throws naming the rule.
void check_input(const RuleInput& in, const std::string& rule);
// Evaluation query positions, in the order of in.eval_rows.
std::vector<i64> eval_positions(const RuleInput& in);

// Selection units of a GQA choice (rules/gqa.h) and the KV head of unit u.
inline int gqa_units(const GqaChoice& gqa, const LayerData& d) {
  return gqa.mode == GqaMode::kv ? d.num_kv_heads : d.num_heads;
}
inline int unit_kv_head(const GqaChoice& gqa, int u, int G) { return gqa.mode == GqaMode::kv ? u : u / G; }

// Keeps every protected j, then the best (k - #protected) others by score (ties: lower index).
// Sets mask[j] = 1 for kept j; mask is not cleared first.
void keep_top(const float* score, i64 n, i64 k, const std::uint8_t* protect, std::uint8_t* mask);
// Top-k among the listed candidate positions (ties: lower position); returns them sorted.
std::vector<i64> top_positions(const std::vector<i64>& cand, const std::vector<double>& score_of_pos, i64 k);

// Softmax over the keys at positions pos[0..m) of one KV head: out[i] = a(q, k_pos[i]).
void subset_probs(const float* q, const float* keys, int d, const i64* pos, i64 m, const kernels::LogitSpec& logit,
                  float* out);

}  // namespace kvsim::rules_more
