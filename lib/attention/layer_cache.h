#pragma once
// Per-layer quantities shared by every rule and budget: full causal attention of the
// evaluation queries and projected value norms. Computed lazily, once, thread-safe.
#include <memory>
#include <vector>

#include "core/types.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim {

enum class NormKind { l1, l2, upper };  // ||v W||_1, ||v W||_2, sum_e sum_d |v_d||W_de|

class LayerCache {
 public:
  LayerCache(const TraceMeta& meta, const LayerData& data, i64 n_c, std::vector<i64> eval_rows);
  ~LayerCache();

  const TraceMeta& meta() const;
  const LayerData& data() const;
  i64 n_c() const;
  i64 n_eval() const;
  const std::vector<i64>& eval_rows() const;
  i64 eval_pos(i64 qi) const;  // position t of evaluation query qi

  // Causal attention probabilities of the evaluation queries for query head h:
  // [n_eval][seq_len], row qi normalised over [0, t_qi], zero after.
  const float* eval_probs(int h) const;
  // Projected value norms nu^h_j for j in [0, seq_len) (needs o_proj; throws otherwise).
  const float* value_norms(int h, NormKind kind) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvsim
