#pragma once
// CriticalKV two-stage selection (spec 2.9), pure function for tests and the critical() wrapper.
#include <cstdint>

#include "core/types.h"

namespace kvsim {

// One unit keeping k tokens of n (protected ones included; n_prot = protected count <= k):
//   stage 1: the top max(0, floor(alpha*k) - n_prot) unprotected tokens by the base score s
//            (kvpress: the window counts inside the stage-1 budget);
//   stage 2: the remaining k - max(n_prot, stage 1) slots go to the best other tokens by
//            (s_j + eps) * nu_j.
// Ties by lower position. Writes mask[0..n) (cleared first).
void critical_select_unit(const float* s, const float* nu, const std::uint8_t* protect, i64 n, i64 n_prot, i64 k,
                          double alpha, double eps, std::uint8_t* mask);

}  // namespace kvsim
