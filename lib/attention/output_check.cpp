#include "attention/output_check.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "attention/layer_cache.h"
#include "core/error.h"

namespace kvsim {

OutputCheck check_attention_output(const TraceMeta& meta, const LayerData& data) {
  if (data.o.empty()) fail(meta.path, "/layers/" + std::to_string(data.layer) + "/o", "not in the trace");
  OutputCheck r;
  r.layer = data.layer;
  r.n_queries = data.num_q;
  const int H = data.num_heads, d = data.head_dim;
  const i64 block = 256;
  for (i64 first = 0; first < data.num_q; first += block) {
    const i64 n = std::min(block, data.num_q - first);
    std::vector<i64> rows(static_cast<std::size_t>(n));
    std::iota(rows.begin(), rows.end(), first);
    const LayerCache cache(meta, data, 0, rows);
    cache.precompute(QuerySet::eval);
    for (int h = 0; h < H; ++h) {
      const float* mine = cache.outputs(QuerySet::eval, h);
      for (i64 i = 0; i < n; ++i) {
        const float* want = data.o.data() + (static_cast<i64>(h) * data.num_q + first + i) * d;
        const float* got = mine + i * d;
        double diff2 = 0, norm2 = 0;
        for (int c = 0; c < d; ++c) {
          const double e = static_cast<double>(got[c]) - want[c];
          r.max_abs_err = std::max(r.max_abs_err, std::abs(e));
          r.max_abs_o = std::max(r.max_abs_o, std::abs(static_cast<double>(want[c])));
          diff2 += e * e;
          norm2 += static_cast<double>(want[c]) * want[c];
        }
        if (norm2 > 0) r.max_rel_err = std::max(r.max_rel_err, std::sqrt(diff2 / norm2));
      }
    }
  }
  return r;
}

}  // namespace kvsim
