#pragma once
// The per-query score rows a scorer aggregates over its observation queries (SnapKV's window
// attention rows, DropKV's one-token moves, H2O's prompt attention rows). defensive(base) takes
// their worst case over the queries instead of the base's mean or sum (rules doc 2.24).
#include <functional>

#include "core/types.h"

namespace kvsim {

struct QueryScoreRows {
  i64 m = 0;        // scored tokens: local positions [0, m) of the span; the rest is protected
  i64 queries = 0;  // observation queries, in position order
  // Writes rows [i1 - i0][m] of query head h for the observation queries [i0, i1). Safe to call
  // from several threads at once for different heads.
  std::function<void(int h, i64 i0, i64 i1, float* rows)> fill;
};

}  // namespace kvsim
