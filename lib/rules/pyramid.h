#pragma once
// PyramidKV layer schedules (rules doc 2.7), pure functions for tests and the pyramid() wrapper.
#include <vector>

#include "core/types.h"

namespace kvsim {

// Integer variant (original / KVCache-Factory / Ada-KV pyram_mode). B = per-head capacity
// including the window w, b = B - w; returns the NON-window budget of each layer
// l = 0..L-1: max - l*step with min = floor(b/beta), max = 2b - min (clamped to n - w),
// step = floor((max - min)/(L - 1)). Flooring makes the total exceed L*b (rules doc 8.3:
// 4016 vs 3840). L = 1 gives b.
std::vector<i64> pyramid_int_nonwindow(int L, i64 B, i64 w, double beta, i64 n);

// Float variant (kvpress PyramidKVPress). B = average kept tokens per head INCLUDING the
// window, UNROUNDED (kvpress: n (1 - cr), e.g. 2007 x 0.5 = 1003.5); returns the kept count
// (window included) of each layer: round_half_even(max - l*(max - min)/(L - 1)), min = B/beta,
// max = 2B - min (clamped to n - w); falls back to uniform max(1, round_half_even(B)) when not
// (n >= max >= min >= w) or L = 1.
std::vector<i64> pyramid_float_kept(int L, double B, i64 w, double beta, i64 n);

}  // namespace kvsim
