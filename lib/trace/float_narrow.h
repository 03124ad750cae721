#pragma once
// float32 -> float16 / bfloat16 narrowing for the trace writer (round to nearest, ties to even).
// Scalar on purpose: writing is not on a hot path, reading (widening) is a SIMD kernel.
#include <cstdint>

#include "core/types.h"

namespace kvsim {

// Largest finite float16 magnitude.
inline constexpr float kFloat16Max = 65504.0f;

std::uint16_t float_to_f16(float x);   // values beyond the float16 range become +-inf
std::uint16_t float_to_bf16(float x);  // NaN stays NaN (quiet)

// Narrow n values. Returns the index of the first value that is non-finite or does not fit the
// target format (|x| rounds beyond the largest finite value), or -1 when all fit.
i64 narrow_to_f16(const float* in, std::uint16_t* out, i64 n);
i64 narrow_to_bf16(const float* in, std::uint16_t* out, i64 n);

}  // namespace kvsim
