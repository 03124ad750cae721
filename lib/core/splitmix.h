#pragma once
// splitmix64 (Steele, Lea, Flood 2014): the one counter hash behind kvsim's reproducible random
// numbers (synthetic traces, the random rule, benchmark inputs). Counter-based, so every draw
// is a pure function of its coordinates, on every platform and thread count.
#include <cstdint>

namespace kvsim {

constexpr std::uint64_t kSplitmixGolden = 0x9E3779B97F4A7C15ull;

// The splitmix64 output function of a state z (without the state increment).
constexpr std::uint64_t splitmix64_finalize(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// One splitmix64 step from state z: advance by the golden gamma, then finalise.
constexpr std::uint64_t splitmix64(std::uint64_t z) { return splitmix64_finalize(z + kSplitmixGolden); }

}  // namespace kvsim
