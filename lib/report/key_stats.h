#pragma once
// Statistics of `kvsim analyze` that need the trace itself (spec section 4.3, KeyDiff premise):
// per (layer, query head) and evaluation set, the Spearman correlation between key
// distinctiveness -cos(k_j, mu) (mu = mean of unit-normalised keys over [0, n_c)) and the mean
// attention key j receives, recall of the attention top-N by the KeyDiff top-N, and how
// concentrated the attention mass over the compressed span is.
#include <string>
#include <vector>

#include "core/types.h"
#include "trace/layer_data.h"

namespace kvsim::report {

struct TopN {
  std::string text;  // as the user wrote it: "16" tokens or "0.1" of n_c
  i64 tokens = 0;    // resolved against n_c, in [1, n_c]
};
// Parses "0.05,0.1,16": values < 1 are fractions of n_c, others token counts.
std::vector<TopN> parse_top_list(const std::string& text, i64 n_c);

struct KeyStatsOptions {
  i64 n_c = 0;     // compression point: keys [0, n_c) are the compressible span
  i64 window = 0;  // observation window: queries at positions [n_c - window, n_c)
  double attn_scale = 0;
  double attn_softcap = 0;  // trace format v2 soft-capping (0 = none)
  std::vector<TopN> top;
};

struct HeadKeyStats {
  int layer = 0, head = 0, kv_head = 0;
  std::string eval;  // "queries" (positions >= n_c) or "window"
  i64 n_queries = 0, n_keys = 0;
  double spearman = 0;      // corr(-cos(k_j, mu), mean attention a_j), average ranks
  double mass_frac_90 = 0;  // mean over queries: fewest span keys holding 90% of the span mass / n_c
  double entropy = 0;       // mean over queries: entropy (nats) of the span attention renormalised
  double entropy_norm = 0;  // entropy / log(n_c)
  double span_mass = 0;     // mean over queries of the attention mass on [0, n_c)
  std::vector<double> recall;  // per options.top: |top-N attention ∩ top-N KeyDiff| / N
};

// KeyDiff scores of one KV head over keys [0, n_c): -cos(k_j, mu).
std::vector<double> keydiff_scores(const float* keys, i64 n_c, int head_dim);

// All heads of one layer. `q_pos` are the positions of the q rows loaded in `layer`.
std::vector<HeadKeyStats> key_stats_for_layer(const LayerData& layer, const std::vector<i64>& q_pos,
                                              const KeyStatsOptions& opt);

}  // namespace kvsim::report
