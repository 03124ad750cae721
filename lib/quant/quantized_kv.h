#pragma once
// A quantized kept cache of one layer: what quant(...) (rules doc 2.33) hands the measurement.
// Per selection unit, the key and value rows the cache gives back for the compressible span
// [0, n_c) (rows of evicted tokens are not used; tokens from n_c on are never quantized), and
// the bytes the unit's kept span occupies.
#include <vector>

#include "core/types.h"

namespace kvsim {

struct QuantizedKV {
  int units = 0;
  i64 n_c = 0;
  int d = 0;
  std::vector<float> k, v;    // [units][n_c][d]
  std::vector<double> bytes;  // [units]
  const float* k_row(int u, i64 j) const { return k.data() + (static_cast<std::size_t>(u) * n_c + j) * d; }
  const float* v_row(int u, i64 j) const { return v.data() + (static_cast<std::size_t>(u) * n_c + j) * d; }
};

}  // namespace kvsim
