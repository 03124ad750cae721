#pragma once
// DefensiveKV's pass over the observation window (rules doc 2.24), shared by defensive(...) and
// defensivekv(...) (2.34, the FFY0/DefensiveKV presses themselves).
#include <vector>

#include "core/types.h"
#include "rules/query_scores.h"
#include "rules/rule.h"

namespace kvsim {

struct DefensiveWindow {
  i64 m = 0;  // scored prefix tokens [begin, end - w)
  // [num_heads][m]: per query head, the worst case (max) over the observation queries of each
  // row's prefix part, average-pooled (kernel) and rescaled to the row's own prefix sum.
  avec<float> worst;
  // With `raw`: [num_kv_heads][m] the unpooled prefix attention, mean over the group's heads and
  // the window queries (FFY0's ave_attn_weights), and the mean over heads and window queries of
  // the mass on the last w prefix columns (its window_bias).
  std::vector<double> mean_raw;
  double window_bias = 0;
};

// The pass over any per-query rows (defensive(base)); `raw` reads them as attention rows.
DefensiveWindow defensive_window(const QueryScoreRows& rows, int num_heads, int num_kv_heads, int kernel, bool raw);
// The pass over the window queries' attention rows (defensive, defensivekv).
DefensiveWindow defensive_window(const RuleInput& in, i64 begin, i64 end, i64 window, int kernel, bool raw,
                                 const std::string& who);

}  // namespace kvsim
