#pragma once
// The segment/block layout of one CritiPrefill layer and its attention-pair counts, computed
// from n and the config alone (no tensors), so the 128K-token counts of rules doc 8.4 can be checked
// without 128K tokens of data.
#include <vector>

#include "core/types.h"
#include "prefill/prefill_config.h"

namespace kvsim::prefill {

struct SegmentInfo {
  i64 start = 0, end = 0;   // query positions [start, end)
  bool dense = false;       // start < threshold, or the last (unprofiled) segment
  i64 eligible_blocks = 0;  // blocks entirely before start (start / bs)
  i64 kept_blocks = 0;      // past blocks attended: all eligible if dense, else min(K, eligible)
  i64 len() const { return end - start; }
};

class SegmentPlan {
 public:
  SegmentPlan() = default;
  SegmentPlan(i64 n, const PrefillConfig& cfg);  // n >= 1 prompt tokens

  i64 n() const { return n_; }
  const PrefillConfig& config() const { return cfg_; }
  i64 num_segments() const { return static_cast<i64>(segs_.size()); }  // ceil(n / S)
  i64 num_profiled() const { return num_segments() - 1; }  // only the first (ceil(n/S)-1)*S positions
  i64 num_blocks() const { return (n_ + cfg_.block - 1) / cfg_.block; }
  const SegmentInfo& segment(i64 s) const { return segs_[static_cast<std::size_t>(s)]; }
  const std::vector<SegmentInfo>& segments() const { return segs_; }
  i64 segment_of(i64 pos) const { return pos / cfg_.segment; }

  i64 num_dense_segments() const;   // all dense ones, the last included
  i64 num_sparse_segments() const { return num_segments() - num_dense_segments(); }
  i64 num_sparse_queries() const;

  // Exact causal attention pairs (query, key) of one head: dense = n(n+1)/2; sparse = for every
  // query kept_blocks * bs past keys plus its own segment prefix. Dense segments count as dense.
  double dense_pairs() const;
  double sparse_pairs() const;
  double pair_reduction() const { return dense_pairs() / sparse_pairs(); }
  // Spec 8.4's figure for the sparsified part only, ignoring the causal triangle inside a
  // segment: sum over sparse segments of end / sum of (kept_blocks * bs + len).
  double sparse_part_reduction() const;
  // Estimation work per query head, in multiply-adds: every sparse segment scores its eligible
  // blocks against two key extremes (2 * eligible * d).
  double estimation_macs(int head_dim) const;

 private:
  i64 n_ = 0;
  PrefillConfig cfg_;
  std::vector<SegmentInfo> segs_;
};

}  // namespace kvsim::prefill
