#include "core/selection.h"

#include <algorithm>
#include <numeric>

namespace kvsim {

const char* gqa_mode_name(GqaMode m) { return m == GqaMode::kv ? "kv" : "query"; }

i64 Selection::kept_count(int u) const {
  const std::uint8_t* m = unit_mask(u);
  i64 c = 0;
  for (i64 j = 0; j < n_c; ++j) c += m[j] != 0;
  return c;
}

void Selection::query_mask(int u, i64 qi, i64 t, std::vector<std::uint8_t>& m) const {
  if (!per_query.empty()) {
    const auto& pq = per_query[static_cast<std::size_t>(u * (static_cast<i64>(per_query.size()) / units) + qi)];
    m.assign(pq.begin(), pq.end());
    return;
  }
  const HeldCache& c = held_caches[static_cast<std::size_t>(held_of[static_cast<std::size_t>(qi)])];
  m.assign(static_cast<std::size_t>(t + 1), 1);
  const std::uint8_t* h = c.held.data() + u * c.from;
  for (i64 j = 0; j < std::min(c.from, t + 1); ++j) m[static_cast<std::size_t>(j)] = h[j];
}

bool Selection::held_rows() const {
  return std::any_of(held_caches.begin(), held_caches.end(), [](const HeldCache& c) { return c.rows != nullptr; });
}

double Selection::mean_kept_count() const {
  if (units == 0) return 0.0;
  double s = 0;
  for (int u = 0; u < units; ++u) s += static_cast<double>(kept_count(u));
  return s / units;
}

}  // namespace kvsim
