#pragma once
// Exact output perturbation of a Selection against full attention, and the papers' bounds
// (rules doc 1.3, 3.1, 3.2), per query head and evaluation query, and for the whole layer.
//
// For query t of head h with support P (kept tokens of [0, n_c) plus [n_c, t] for evaluation
// queries; kept tokens of [0, t] for window queries; the per-query mask for step-wise rules):
//   F = sum_P a_j, delta = o - o_P / F, Delta^h = delta W_o^h, Delta = sum_h Delta^h.
//   bound_ada (head) = 2(1 - F) max_{j<=t} nu_j; theta = sum_j a_j nu_j - (2 - 1/F) sum_P a_j nu_j;
//   layer: 2 C sum_h (1 - F_h) with C = max_h max_{j<=t} nu^h_j, and sum_h theta_h.
// Key-channel pruning (ThinK): attention is recomputed with pruned keys over P; both bounds add
// 2 tanh(r/4) max_P nu, r = the range over P of the logit shift (layer Ada row: + tanh(r_h/4) per
// head inside the sum), since ||softmax_P(z) - softmax_P(z')||_1 <= 2 tanh(r/4).
// Window queries (t < n_c) use the static kept sets (per-query masks describe decoding steps).
// A query whose support is empty (possible for window queries only) gets F = 0 and NaN metrics.
// Numerics: kept and evicted masses are separate positive sums; delta uses the evicted sum when
// F >= 1/2 and the support sum otherwise, so float32 stays within ~1e-6 of a float64 oracle.
// Deterministic: every reduction has a fixed order, independent of the thread count.
#include <vector>

#include "attention/layer_cache.h"
#include "attention/layer_reference.h"
#include "core/selection.h"

namespace kvsim {

struct PerturbationResult {
  int num_heads = 0;
  i64 n_q = 0;
  // Per head and query, index h * n_q + qi.
  std::vector<double> F, l1, l2, rel_l1, rel_l2, bound_ada, theta;
  // Whole layer, per query.
  std::vector<double> layer_F_mean, layer_F_min, layer_l1, layer_l2, layer_rel_l1, layer_rel_l2,
      layer_ada, layer_theta;
  std::size_t at(int h, i64 qi) const { return static_cast<std::size_t>(h) * n_q + qi; }
};

// Throws kvsim::Error when the selection does not fit the layer (units, n_c, mask lengths).
PerturbationResult measure_perturbation(const LayerCache& cache, const LayerReference& ref,
                                        const Selection& sel);
// The same for several selections (the budgets of one rule). Static kept sets of one GQA mode
// share each pass over the attention probabilities and all selections share one pass through
// o_proj (bit-identical to one call per selection); where their kept sets are nested in a unit
// (the budgets of one score rule), every column is multiplied once for the whole batch
// (static_sums.h), equal to one call per selection within float32 reassociation.
std::vector<PerturbationResult> measure_perturbations(const LayerCache& cache, const LayerReference& ref,
                                                      const std::vector<Selection>& sels);
// A layer's replay: the budgets of every rule ([rule][budget]) measured on one query set in one
// walk over the KV groups, each group's probability tile freed once every selection has used it
// (LayerCache::release_probs), so long contexts never hold all H x n x seq_len probabilities;
// the reference (LayerReference with nu) is built from the head outputs. Equal to
// measure_perturbations per rule, bit for bit. attention_seconds (if given) is increased by the
// wall time of the attention core and the reference.
std::vector<std::vector<PerturbationResult>> measure_rules(const LayerCache& cache, QuerySet set, NormKind nu,
                                                           const std::vector<std::vector<Selection>>& rules,
                                                           double* attention_seconds = nullptr);

}  // namespace kvsim
