#include "prefill/block_selection.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace kvsim::prefill {

BlockSelection::BlockSelection(const SegmentPlan& plan, int num_kv_heads)
    : plan_(plan), num_kv_heads_(num_kv_heads),
      sel_(static_cast<std::size_t>(num_kv_heads) * static_cast<std::size_t>(plan.num_segments())) {}

BlockSelection BlockSelection::dense(const SegmentPlan& plan, int num_kv_heads) {
  BlockSelection sel(plan, num_kv_heads);
  for (int g = 0; g < num_kv_heads; ++g)
    for (i64 s = 0; s < plan.num_segments(); ++s) {
      std::vector<std::int32_t> all(static_cast<std::size_t>(plan.segment(s).eligible_blocks));
      std::iota(all.begin(), all.end(), 0);
      sel.sel_[sel.index(g, s)] = std::move(all);
    }
  return sel;
}

void BlockSelection::set_blocks(int g, i64 s, std::vector<std::int32_t> blocks) {
  std::sort(blocks.begin(), blocks.end());
  const i64 eligible = plan_.segment(s).eligible_blocks;
  if (!blocks.empty() && (blocks.front() < 0 || blocks.back() >= eligible))
    fail("prefill", "selection",
         "segment " + std::to_string(s) + " selected block " + std::to_string(blocks.back()) +
             " at or after its start (causality violated)");
  if (std::adjacent_find(blocks.begin(), blocks.end()) != blocks.end())
    fail("prefill", "selection", "segment " + std::to_string(s) + " selected a block twice");
  sel_[index(g, s)] = std::move(blocks);
}

double BlockSelection::attended_pairs() const {
  double pairs = 0;
  for (int g = 0; g < num_kv_heads_; ++g)
    for (i64 s = 0; s < plan_.num_segments(); ++s) {
      const double len = static_cast<double>(plan_.segment(s).len());
      pairs += len * static_cast<double>(blocks(g, s).size()) * static_cast<double>(plan_.config().block) +
               0.5 * len * (len + 1);
    }
  return pairs;
}

}  // namespace kvsim::prefill
