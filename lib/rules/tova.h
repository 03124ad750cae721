#pragma once
// TOVA (rules doc 2.5): token score = attention of the current query averaged over ALL query heads of
// the layer, so every KV head keeps the same set.
//   oneshot   kvpress TOVAPress: last prompt query's row (softmax over [0, n_c - 1], its own
//             column dropped), last prompt token force-kept; top n_kept at n_c.
//   stepwise  original TOVA: fixed cache of N tokens; after the last prompt row and after each
//             evaluation query's row, keep the top N (the current token competes). Each query
//             attends to the cache plus the tokens added since the previous step.
#include <vector>

#include "rules/h2o_common.h"

namespace kvsim {

// mean_h softmax(scale q^h_row . k_j) over the listed positions (all query heads of the layer).
std::vector<float> tova_scores(const LayerData& data, i64 row, const std::vector<i64>& pos,
                               const kernels::LogitSpec& logit);

Selection tova_stepwise(const RuleInput& in, i64 cache_size);

}  // namespace kvsim
