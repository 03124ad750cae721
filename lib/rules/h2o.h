#pragma once
// H2O / heavy hitters (rules doc 2.4), three variants:
//   kvpress   ObservedAttention: column sums of the prompt attention divided by the number of
//             queries that see each key (n_c - j); one-shot; nothing protected.
//   factory   KVCache-Factory H2OKVCluster: raw column sums; the last `window` prompt tokens
//             protected inside the budget; one-shot.
//   stepwise  original H2O: running column sums, updated by every evaluation query; each query
//             attends to the `recent` newest tokens plus the `heavy` best older ones still present.
// All variants need the queries of every prompt position [0, n_c).
#include <vector>

#include "rules/h2o_common.h"

namespace kvsim {

// For the span [begin, end), n = end - begin: out[h * n + j] = sum_{t=j}^{n-1} a^h_{t,j} for every
// query head h, a = causal softmax of the queries at positions begin + t (rows[t] = their q rows)
// over the keys [begin, begin + t], accumulated in float64. Blocked GEMMs, OpenMP over heads;
// never holds more than a block of rows.
std::vector<double> prompt_attention_column_sums(const LayerData& data, const std::vector<i64>& rows, i64 begin,
                                                 i64 end, const kernels::LogitSpec& logit);

// Step-wise H2O for one layer, given the per-unit initial running scores [units][n_c] (prompt
// column sums, group-reduced in KV mode). Cache of heavy + recent tokens (the current token
// included); fills kept (state after the prefill compression) and per_query.
Selection h2o_stepwise(const RuleInput& in, const GqaChoice& gqa, const std::vector<double>& unit_scores,
                       i64 heavy, i64 recent);

}  // namespace kvsim
