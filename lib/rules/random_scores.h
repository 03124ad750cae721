#pragma once
// The score stream of random(seed), exposed so tests can rebuild it independently.
#include <cstdint>

#include "core/types.h"

namespace kvsim {

// Uniform [0, 1) with 24-bit resolution, a pure function of (seed, layer, unit, position).
float random_score(std::uint64_t seed, int layer, int unit, i64 pos);

}  // namespace kvsim
