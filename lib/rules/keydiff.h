#pragma once
// KeyDiff (rules doc 2.10, 3.3): keep the keys least similar to the anchor of the candidate keys,
// score_j = -cos(k_j, mu), mu = mean of the unit-normalised candidate keys (anchor=unit) or the
// plain mean key (anchor=raw). Keys only, per KV head.
// Block-wise processing under a fixed budget N (BlockPress): the first N tokens form the cache;
// each following block of bs tokens joins it as candidates, the anchor is recomputed over the
// candidates and the top N stay. block = 0 (or block >= n - N) is the one-shot KeyDiffPress.
// recent > 0 reserves floor(recent * N) slots for the newest prompt tokens; the rest of the
// budget runs the block process over the older tokens.
// Replay caveat (rules doc 5 #16): the paper prefills chunk by chunk against the evicted cache; a
// full-cache trace only simulates that, as kvpress BlockPress does.
#include <vector>

#include "core/types.h"

namespace kvsim {

enum class KeyDiffAnchor { unit, raw };

// Scores of the keys at positions pos[0..m) (rows of a [*, d] key matrix), anchor over them.
void keydiff_scores(const float* keys, int d, const i64* pos, i64 m, KeyDiffAnchor anchor, float* out);

// Kept positions (sorted) of [0, n) for budget N; block 0 = one shot.
std::vector<i64> keydiff_select(const float* keys, int d, i64 n, i64 N, i64 block, KeyDiffAnchor anchor);

}  // namespace kvsim
