#pragma once
// Observation-window attention shared by SnapKV-family scorers (rules doc 2.6 steps 1-2).
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "core/types.h"
#include "rules/query_scores.h"
#include "rules/rule.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

// For every query head h and the w window queries at positions t in [end - w, end):
//   a^h_{t,j} = softmax_j(scale * q^h_t . k^{g(h)}_j) over keys j in [begin, t] (causal),
// then aggregated over the w queries (sum, or mean when `mean`) for the prefix columns
// j in [begin, end - w) only; window columns are dropped WITHOUT renormalising.
// Returns [num_heads][m], m = end - begin - w, in fp32 (logits by sgemm, max-subtracted
// softmax, fp32 accumulation). `who` names the rule in errors (missing window queries).
avec<float> window_attention(const TraceMeta& meta, const LayerData& d, i64 begin, i64 end, i64 w, bool mean,
                             const std::string& who);

// Per-layer memo of window_attention results: the rules of one replay that share an observation
// window (snapkv, pyramid(snapkv), ada(snapkv), critical(...) over them) compute it once per
// layer instead of once each. Thread-safe; lives as long as the layer (RuleInput::window_memo).
class WindowAttentionMemo {
 public:
  std::shared_ptr<const avec<float>> get(const TraceMeta& meta, const LayerData& d, i64 begin, i64 end, i64 w,
                                         bool mean, const std::string& who);

 private:
  std::mutex mu_;
  std::map<std::tuple<i64, i64, i64, bool>, std::shared_ptr<const avec<float>>> memo_;
};

// Query head h's causal attention rows of the w window queries (rows of data.q, positions
// end - w + i) over the keys [begin, end): probs[i][j] = softmax over j <= t of the trace's
// logits (logit_softmax_inplace), 0 after t. qw holds w x head_dim floats, probs w x (end - begin).
// The per-row form dropkv, defensive and finch aggregate in their own ways.
void window_probability_rows(const TraceMeta& meta, const LayerData& d, int h, const std::vector<i64>& rows,
                             i64 begin, i64 end, float* qw, float* probs);

// The observation queries at local positions [0, queries) ... as QueryScoreRows: query i sits at
// span position first + i, its row over the keys [begin, begin + first + i] (0 after), cut to the
// m scored columns. Used by the attention scorers' query_rows (snapkv: first = m, the window;
// h2o: first = 0, every prompt query). `rows` are the data.q rows of the queries.
QueryScoreRows attention_query_rows(const RuleInput& in, i64 begin, i64 first, std::vector<i64> rows, i64 m);
// The w window queries' attention rows over the prefix [begin, end - w) (snapkv's query_rows,
// the window pass of defensive and defensivekv); `who` names the rule in errors.
QueryScoreRows window_attention_rows(const RuleInput& in, i64 begin, i64 end, i64 w, const std::string& who);

// Row of data.q holding position t; throws naming `who` if the trace did not store it.
i64 query_row(const TraceMeta& meta, i64 t, const std::string& who);

// The rows of data.q of the w window queries at positions [end - w, end), after checking that
// the window leaves a token to score in [begin, end - w) and that every stored query row is
// loaded; throws naming `who`.
std::vector<i64> window_query_rows(const TraceMeta& meta, const LayerData& d, i64 begin, i64 end, i64 w,
                                   const std::string& who);

}  // namespace kvsim
