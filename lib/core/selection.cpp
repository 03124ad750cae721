#include "core/selection.h"

#include <numeric>

namespace kvsim {

const char* gqa_mode_name(GqaMode m) { return m == GqaMode::kv ? "kv" : "query"; }

i64 Selection::kept_count(int u) const {
  const std::uint8_t* m = unit_mask(u);
  i64 c = 0;
  for (i64 j = 0; j < n_c; ++j) c += m[j] != 0;
  return c;
}

double Selection::mean_kept_count() const {
  if (units == 0) return 0.0;
  double s = 0;
  for (int u = 0; u < units; ++u) s += static_cast<double>(kept_count(u));
  return s / units;
}

}  // namespace kvsim
