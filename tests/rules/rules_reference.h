#pragma once
// Brute-force float64 references for the core selection rules, written independently of
// lib/rules (plain loops, double, their own softmax/pooling/sorting), and test layers.
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attention/layer_cache.h"
#include "rules/budget.h"
#include "rules/rule.h"
#include "rules/scored_rule.h"
#include "trace/layer_data.h"
#include "trace/synthetic.h"
#include "trace/trace_meta.h"

namespace kvsim::test {

// One layer with everything a rule reads.
struct TestLayer {
  TraceMeta meta;
  LayerData data;
  i64 n_c = 0;
  std::vector<i64> eval_rows;
  std::unique_ptr<LayerCache> cache;
  RuleInput input() const;
};
// Synthetic layer (lib/trace/synthetic.h) of a small model: H heads, Hkv KV heads.
std::unique_ptr<TestLayer> synthetic_test_layer(int H, int Hkv, int layer, std::uint64_t seed, int num_layers = 4);
// The same for any synthetic model shape (o_proj may be absent).
std::unique_ptr<TestLayer> synthetic_test_layer(const SynthOptions& o, int layer);
// Layer of a trace file, compression point at the end of the context.
std::unique_ptr<TestLayer> trace_test_layer(const std::string& path, int layer);
// The 4 layers of a small synthetic model (600 tokens, head_dim 16, hidden 48, every query
// stored) for the cross-layer rules.
std::vector<std::unique_ptr<TestLayer>> synthetic_model(int H, int Hkv, std::uint64_t seed);
// Synthetic layers with G = 1, 2, 4 (seeds seed, seed + 1, seed + 2) and, when present, layer
// trace_layer of traces/niah_stories260k.h5: the rule tests' usual set.
std::vector<std::unique_ptr<TestLayer>> standard_test_layers(std::uint64_t seed, int trace_layer);
// A cross-layer rule as a replay runs it: every layer observed, then each selected with its
// planned counts. [budget][layer] kept sets.
std::vector<std::vector<Selection>> planned_select(const std::string& spec,
                                                   const std::vector<std::unique_ptr<TestLayer>>& layers,
                                                   const std::vector<Budget>& budgets);

using Mat = std::vector<std::vector<double>>;  // [unit][token]
using Masks = std::vector<std::vector<std::uint8_t>>;

struct RefSnap {
  i64 window = 32;
  int kernel = 7;
  bool max_pool = true, mean = true, pool_first = true;
  std::string gqa = "mean";  // mean|max|sum|query
};
// SnapKV scores of the m = n_c - window prefix tokens, per unit.
Mat ref_snapkv(const TestLayer& L, const RefSnap& p);
// CAOTE on attention-like prefix scores a (per unit): a_j / (1 - a_j) ||o - v_j||_2 with a
// normalised over the unit's prefix and o = sum a_j v_j (v of the unit's KV head).
Mat ref_caote(const TestLayer& L, const Mat& prefix_scores, bool query_mode);
// DropKV scores of the m = n_c - window prefix tokens: per head sum over the window queries of
// (p/(1-p+eps))^2 ||v_j - o_t||^2, average-pooled, reduced per gqa.
// Relative error of the scores within 1e-6 of the unit's largest (the far tail is rounding).
double worst_relative(const UnitScores& s, const Mat& ref);
// DropKV's one-token moves of query t of head h over [0, n_c) (0 after t), float64.
std::vector<double> ref_dropkv_row(const TestLayer& L, int h, i64 t, double eps);
Mat ref_dropkv(const TestLayer& L, i64 window, int kernel, double eps, const std::string& gqa);
// Mean over evaluation queries of exact attention on [0, n_c), reduced per gqa.
Mat ref_oracle(const TestLayer& L, const std::string& gqa);
// -||k_j||_2 per KV head over [0, n_c).
Mat ref_knorm(const TestLayer& L);
// Projected value norms per unit (group mean in kv mode), kind l1|l2|upper, over [0, n_c).
Mat ref_value_norms(const TestLayer& L, const std::string& kind, bool query_mode);

// Indices of the k best entries of x (larger first, lower index on ties) among allowed ones.
std::vector<i64> ref_top(const std::vector<double>& x, i64 k, const std::vector<std::uint8_t>* exclude = nullptr);
// Masks over [0, n) keeping the window [n - w, n) plus per-unit top-(count_u - w) of the
// prefix scores (score rows have length n - w).
Masks ref_keep_prefix(const Mat& prefix_scores, i64 n, i64 w, const std::vector<i64>& counts);
// Ada-KV per-unit counts (window included), independent implementation.
std::vector<i64> ref_ada_counts(const Mat& prefix_scores, i64 w, i64 B, double alpha, bool variant_a, bool normalize,
                                bool window_in_floor);
// CriticalKV masks: protected window, stage 1 (stage1[u] tokens, window included) by score,
// stage 2 by (s + eps) * nu.
Masks ref_critical(const Mat& prefix_scores, const Mat& nu, i64 n, i64 w, const std::vector<i64>& counts,
                   const std::vector<i64>& stage1, double eps);
// kvpress's Ada-KV safeguard n_safe = int(B * alpha), at least 1 when alpha > 0.
i64 ref_n_safe(i64 B, double alpha);

// oracle_greedy (rules doc 2.19): the layer objective J(S) = sum over evaluation queries of
// ||Delta_t||_2^2 (rules doc 1.3: through o_proj, else the concatenated head outputs) of kept sets
// [unit][n_c] (units: KV heads, or query heads in query mode), from Q/K/V in float64; and the
// exact greedy descent (step=0) to B tokens per unit (per_head) or B x units in all, which
// recomputes J from scratch for every candidate of every step.
double ref_layer_objective(const TestLayer& L, const Masks& kept, bool query_mode);
Masks ref_greedy(const TestLayer& L, bool query_mode, bool per_head, i64 B);

// kvpress scorers without attention (rules doc 2.20-2.22), per KV head over [0, n_c); protected
// tokens score NaN. lagkv: sinks and the unreferenced tail score 1, the rest ranks / lag (or the
// scores with cross); cur: squared norms per local block, combined; noncausal: chunked non-causal
// attention column sums (kvpress's padding), group mean x ||v||, average-pooled (kernel 3).
Mat ref_lagkv(const TestLayer& L, i64 sink, i64 lag, bool cross);
Mat ref_cur(const TestLayer& L, i64 sink, const std::string& type, i64 local);
Mat ref_noncausal(const TestLayer& L, i64 chunk);
// The inverse of a square matrix by Gauss-Jordan elimination with partial pivoting.
Mat ref_inverse(const Mat& M);
// cap (rules doc 2.29): per query head, w_j = exp(tau cos(anchor, k_j) - max) with the anchor the
// mean de-rotated query after the sinks under the mean future rotation, score w_j v_j^T A^-1 v_j
// with A = I + sum (w + eps) v v^T (Gauss-Jordan), group mean; the sinks NaN.
Mat ref_cap(const TestLayer& L, i64 sink, double tau, i64 n_future, double eps);
// Kept sets of such scores at B per unit: the protected (NaN) tokens, then the best others.
Masks ref_keep_scored(const Mat& scores, i64 B);

// defensive (rules doc 2.24): per head and window query, the prefix attention pooled (average)
// and rescaled to the row's prefix mass; max over the window queries; the group reduction; the
// floor at the mean (prior). Scores of the m = n_c - window prefix tokens.
// DefensiveKV's aggregation of any per-query rows (rules doc 2.24): each query's row cut to the
// m scored tokens, average-pooled and rescaled to its own sum, the max over the queries, the
// group reduction and the prior floor. [unit][m].
Mat ref_defensive_of(const TestLayer& L, const std::vector<i64>& queries, i64 m,
                     const std::function<std::vector<double>(int h, i64 t)>& row_of_query, int kernel,
                     const std::string& gqa, bool prior);
Mat ref_defensive(const TestLayer& L, i64 window, int kernel, const std::string& gqa, bool prior);

// Float64 causal attention of query head h at position t (stored) over [0, t].
std::vector<double> ref_softmax_prefix(const TestLayer& L, int h, i64 t);

}  // namespace kvsim::test
