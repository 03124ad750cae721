#pragma once
// ExpectedAttention (kvpress, rules doc 2.11): estimate the attention future queries will pay each
// key from the statistics of the PRE-RoPE prompt queries (mean, covariance), rotated by the
// average RoPE rotation of the next n_future positions:
//   z_j = s mu'.k_j + s^2/2 k_j^T Sigma' k_j   (Gaussian MGF of exp(s q.k); s = logit scale)
//   score = softmax_j(z) over j >= n_sink, group-reduced, times (score + eps) * ||v_j|| (vnorm).
// Pre-RoPE queries are recovered by de-rotating the stored post-RoPE ones (rules/rope.h).
// space=log (default) computes the same scores as natural logs: log softmax, log-mean-exp over
// the group, + log(||v||) (after log-add-exp with log eps). On real traces float32 softmax of z
// underflows to exactly 0 for most tokens, so kvpress (and space=linear) rank a huge tie by
// position and precision; in log space the order of the estimate itself decides.
#include <vector>

#include "core/types.h"
#include "rules/rope.h"

namespace kvsim {

struct QueryStats {
  std::vector<double> mean;  // [d], rotated by the mean future rotation
  std::vector<double> cov;   // [d][d], rotated (zero when covariance is off)
};

// Statistics of pre-RoPE queries pre[m][d] (already de-rotated), with the mean rotation over
// positions [first_future, first_future + n_future). Covariance divides by m.
QueryStats expected_query_stats(const float* pre, i64 m, int d, const Rope& rope, i64 first_future, i64 n_future,
                                bool covariance);

// Softmax over the keys at rows [0, n) of z_j (see above); out[n]. log_space: log softmax.
void expected_key_scores(const QueryStats& st, const float* keys, i64 n, int d, float scale, bool covariance,
                         float* out, bool log_space = false);

}  // namespace kvsim
