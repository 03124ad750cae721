#pragma once
// Ada-KV head-wise budget allocation (rules doc 2.8), as pure functions over score arrays so the
// toy examples of rules doc 8.1 can be checked directly. scores: [H][m] row-major, the m
// unprotected (non-window) tokens of each of the H units of one layer.
#include <vector>

#include "core/types.h"

namespace kvsim {

// n_h = how many of the flattened top-`total` entries belong to head h. Ties: lower head,
// then lower position (head-major flattening), consistent with per-head top-k.
std::vector<i64> ada_flattened_counts(const float* scores, int H, i64 m, i64 total);

// Variant A (AdaKV repo): b = average non-window budget; n_h = flattened counts of the top H*b
// (after scaling head h by rho_h = sum of its top-b / sum of all when `normalize`);
// B_h = round_half_even((1 - alpha) n_h + floor(alpha b)) (torch.round; std::nearbyint).
// Returns non-window budgets (they may sum to H*b +- H/2).
std::vector<i64> ada_variant_a(const float* scores, int H, i64 m, i64 b, double alpha, bool normalize);

// Variant B (kvpress AdaKVPress): each head's top-n_floor entries are forced in, the rest of
// the H*b global slots go to the best remaining entries. Returns non-window counts (sum H*b).
std::vector<i64> ada_variant_b(const float* scores, int H, i64 m, i64 b, i64 n_floor);

}  // namespace kvsim
