#pragma once
// ThinK (rules doc 2.12): key-channel pruning composed after a token rule. The base rule picks the
// tokens; ThinK scores every channel c of KV head g by
//   (mean over the group of mean_t q_{t,c}^2, t = the last `window` prompt queries)
//   x (mean over the kept keys j of k_{j,c}^2)
// and zeroes the floor(d * ratio) lowest channels (Selection::key_channels). The key statistic
// runs over the base rule's kept prompt tokens, as kvpress ComposedPress applies ThinK to the
// already compressed cache (query mode: the union of the group's kept sets).
#include <vector>

#include "core/types.h"

namespace kvsim {

// Channel scores [d] of one KV head: q_sq = group-mean of per-head mean q^2 [d], from the
// window rows; keys over the listed positions.
std::vector<double> think_channel_scores(const std::vector<double>& q_sq, const float* keys, int d,
                                         const std::vector<i64>& kept_pos);
// key_channels row [d]: 1 = kept, 0 = pruned (floor(d * ratio) lowest scores; ties prune the
// lower channel).
std::vector<std::uint8_t> think_channel_mask(const std::vector<double>& score, double ratio);

}  // namespace kvsim
