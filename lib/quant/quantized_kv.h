#pragma once
// The rows a cache gives back instead of the trace's, for one layer. quant(...) (rules doc 2.33)
// hands the measurement its quantized kept cache this way; the decode protocol (rules doc 1.9)
// also uses it per held cache, for ThinK's pruned keys and for tokens quantized at earlier cuts.
// Per selection unit, the key and value rows for the span [0, n_c) (rows of evicted tokens are
// not used; tokens from n_c on are always the trace's own), which rows are held as codes, and
// the bytes the unit's kept span occupies.
#include <cstdint>
#include <vector>

#include "core/types.h"

namespace kvsim {

struct QuantizedKV {
  int units = 0;
  i64 n_c = 0;
  int d = 0;
  std::vector<float> k, v;    // [units][n_c][d]; v empty: the trace's values (ThinK prunes keys only)
  std::vector<double> bytes;  // [units]
  // Which rows are held as codes ([units][n_c], 1 = codes; empty: none), and what a coded row
  // costs per side (codes plus its share of its group's scale and zero point): a quantized token
  // keeps its codes while it stays cached, so later cuts carry it over instead of re-quantizing.
  std::vector<std::uint8_t> k_coded, v_coded;
  double k_coded_row_bytes = 0, v_coded_row_bytes = 0;
  const float* k_row(int u, i64 j) const { return k.data() + (static_cast<std::size_t>(u) * n_c + j) * d; }
  const float* v_row(int u, i64 j) const { return v.data() + (static_cast<std::size_t>(u) * n_c + j) * d; }
  bool has_values() const { return !v.empty(); }
  bool k_is_coded(int u, i64 j) const { return !k_coded.empty() && k_coded[static_cast<std::size_t>(u) * n_c + j]; }
  bool v_is_coded(int u, i64 j) const { return !v_coded.empty() && v_coded[static_cast<std::size_t>(u) * n_c + j]; }
};

}  // namespace kvsim
