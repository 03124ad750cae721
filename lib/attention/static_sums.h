#pragma once
// Internal to measure_perturbations (perturbation.cpp): what one selection's metrics are built
// from, and the pass that fills them for static kept sets (static_sums.cpp).
#include <algorithm>
#include <vector>

#include "attention/layer_cache.h"
#include "core/selection.h"

namespace kvsim::perturbation_detail {

struct Shape {
  int H, Hkv, G, d, D;
  i64 S, n;
};

// Which sum delta is formed from. The support form o - oP/F loses relative accuracy when F -> 1
// (delta is a small difference), the evicted form (oev - (1-F) o)/F when F -> 0 (1/F amplifies
// rounding); between 5% and 95% both stay within ~1e-6, so the cheaper one (fewer columns) wins.
inline bool use_support_form(double kept_mass, double evicted_mass, bool prefer_support) {
  const double F = kept_mass / (kept_mass + evicted_mass);
  if (F < 0.05) return true;
  if (F > 0.95) return false;
  return prefer_support;
}

// Per-thread scratch that is fully overwritten before it is read (no per-call zero fill).
inline float* scratch_floats(std::size_t slot, std::size_t n) {
  static thread_local std::vector<avec<float>> buf;
  if (buf.size() <= slot) buf.resize(slot + 1);
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

// out[i] = rows[cols[i]] for rows of length d: the key or value rows of a set of columns,
// contiguous for one sgemm.
inline void gather_rows(const float* rows, const std::vector<i64>& cols, int d, float* out) {
  for (std::size_t i = 0; i < cols.size(); ++i) std::copy_n(rows + cols[i] * d, d, out + i * d);
}

// What one selection's metrics are built from: evicted mass E and kept mass K, summed separately
// (both positive sums, so F = K / (K + E) never comes from a cancellation), their nu-weighted
// versions, and per head and query either the evicted or the support output sum (use_support),
// later turned into delta in place.
struct Sums {
  std::vector<double> E, K, Enu, Knu;
  avec<float> delta;
  std::vector<std::uint8_t> use_support;
  std::vector<double> shift_range, support_nu_max;  // ThinK and quant (recomputed_head)
  std::vector<double> value_err_max;                // quant: max over the support of ||(vhat - v) W_o||_1
  explicit Sums(std::size_t hn, int d) : E(hn, 0.0), K(hn, 0.0), Enu(hn, 0.0), Knu(hn, 0.0), delta(hn * d, 0.f),
                                          use_support(hn, 0), shift_range(hn, 0.0), support_nu_max(hn, 0.0),
                                          value_err_max(hn, 0.0) {}
};

// Static kept masks, all heads of one unit and the queries [q0, q1) (one probability tile's
// range), for a batch of selections (the budgets of one rule) in one pass over each probability row: for every selection, the masses (kernels::split_mass_sums)
// and the row compacted to the columns of the better-conditioned form of delta, while the row is
// still in cache. Rows with F >= 1/2 get the evicted sum oev (delta = (oev - (1-F) o)/F), rows
// with F < 1/2 the support sum oP (delta = o - oP/F), so 1/F never amplifies a cancellation. Each
// (selection, form) is then one sgemm of the compacted rows with the gathered value rows.
void static_unit(const LayerCache& cache, QuerySet set, NormKind nu, const std::vector<const Selection*>& sels,
                 const Shape& s, int u, i64 q0, i64 q1, const std::vector<Sums*>& sums);

}  // namespace kvsim::perturbation_detail
