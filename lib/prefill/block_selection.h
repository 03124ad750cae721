#pragma once
// Which past key blocks each query segment attends to, per KV head. A segment always attends
// to its own keys causally as well; that part is implicit and never listed here.
#include <cstdint>
#include <vector>

#include "prefill/segment_plan.h"

namespace kvsim::prefill {

class BlockSelection {
 public:
  BlockSelection(const SegmentPlan& plan, int num_kv_heads);  // starts with nothing selected
  // Every segment attends to all blocks before its start: the dense causal layer.
  static BlockSelection dense(const SegmentPlan& plan, int num_kv_heads);

  const SegmentPlan& plan() const { return plan_; }
  int num_kv_heads() const { return num_kv_heads_; }
  // Sorted past blocks (each < segment start / bs) of segment s for KV head g.
  const std::vector<std::int32_t>& blocks(int g, i64 s) const { return sel_[index(g, s)]; }
  // Sorts, and checks causality: throws if a block at or after the segment start is listed.
  void set_blocks(int g, i64 s, std::vector<std::int32_t> blocks);
  // Sum over segments, KV heads and queries of attended (query, key) pairs, causal triangle
  // inside the own segment included.
  double attended_pairs() const;

 private:
  std::size_t index(int g, i64 s) const {
    return static_cast<std::size_t>(g * plan_.num_segments() + s);
  }
  SegmentPlan plan_;
  int num_kv_heads_;
  std::vector<std::vector<std::int32_t>> sel_;
};

}  // namespace kvsim::prefill
