#pragma once
// Selection-independent quantities of one layer and query set that every metric row needs:
// norms of the full-attention projected head outputs o^h W_o^h and of the layer output y, and
// for the bounds max_{j<=t} nu_j per head and query. Needs the head outputs, not the
// probability tiles (it can be built after they were released).
#include <vector>

#include "attention/layer_cache.h"

namespace kvsim {

class LayerReference {
 public:
  // nu: value norm used by the bounds (l1 exact, or upper: the cheap |v||W| upper bound).
  LayerReference(const LayerCache& cache, QuerySet set, NormKind nu);

  QuerySet set() const { return set_; }
  NormKind nu_kind() const { return nu_; }
  i64 n_q() const { return n_q_; }
  bool projected() const { return projected_; }
  // [h * n_q + qi]
  double head_out_l1(int h, i64 qi) const { return head_l1_[h * n_q_ + qi]; }
  double head_out_l2(int h, i64 qi) const { return head_l2_[h * n_q_ + qi]; }
  double nu_max(int h, i64 qi) const { return nu_max_[h * n_q_ + qi]; }   // max_{j<=t} nu_j
  double layer_out_l1(i64 qi) const { return y_l1_[qi]; }
  double layer_out_l2(i64 qi) const { return y_l2_[qi]; }

 private:
  QuerySet set_;
  NormKind nu_;
  i64 n_q_ = 0;
  bool projected_ = false;
  std::vector<double> head_l1_, head_l2_, nu_max_, y_l1_, y_l2_;
};

}  // namespace kvsim
