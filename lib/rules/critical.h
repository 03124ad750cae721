#pragma once
// CriticalKV two-stage selection (rules doc 2.9), pure function for tests and the critical() wrapper.
#include <cstdint>

#include "core/types.h"

namespace kvsim {

// One unit keeping k tokens of n (protected ones included; n_prot = protected count <= k):
//   stage 1: the top max(0, stage1 - n_prot) unprotected tokens by the base score s (stage1
//            counts the protected tokens: kvpress's window counts inside the stage-1 budget);
//   stage 2: the remaining k - max(n_prot, stage 1) slots go to the best other tokens by
//            (s_j + eps) * nu_j.
// Ties by lower position. Writes mask[0..n) (cleared first).
void critical_select_unit(const float* s, const float* nu, const std::uint8_t* protect, i64 n, i64 n_prot, i64 k,
                          i64 stage1, double eps, std::uint8_t* mask);
// The same with stage 1 ranked by `rank` (any increasing function of the masses s, e.g. their
// logs) and stage 2 weighting the masses s.
// tied (optional): Selection::tied_at_cut of the stage-2 cut.
void critical_select_unit(const float* rank, const float* s, const float* nu, const std::uint8_t* protect, i64 n,
                          i64 n_prot, i64 k, i64 stage1, double eps, std::uint8_t* mask, i64* tied);
// The same with stage1 = floor(alpha * k).
void critical_select_unit(const float* s, const float* nu, const std::uint8_t* protect, i64 n, i64 n_prot, i64 k,
                          double alpha, double eps, std::uint8_t* mask);

}  // namespace kvsim
