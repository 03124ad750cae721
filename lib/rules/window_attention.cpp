#include "rules/window_attention.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/kernels.h"

namespace kvsim {

i64 query_row(const TraceMeta& meta, i64 t, const std::string& who) {
  auto it = std::lower_bound(meta.q_pos.begin(), meta.q_pos.end(), t);
  if (it == meta.q_pos.end() || *it != t)
    fail(meta.path, "/q_pos",
         who + " needs the query at position " + std::to_string(t) +
             " (observation window before the compression point), which the trace does not store");
  return it - meta.q_pos.begin();
}

std::vector<i64> window_query_rows(const TraceMeta& meta, const LayerData& d, i64 begin, i64 end, i64 w,
                                   const std::string& who) {
  const i64 L = end - begin, m = L - w;
  if (w < 1) fail(who, "window", "must be at least 1");
  if (m < 1)
    fail(who, "window", "the window of " + std::to_string(w) + " queries leaves no token to score in a span of " +
                            std::to_string(L));
  if (d.num_q != static_cast<i64>(meta.q_pos.size()))
    fail(who, "", "needs every stored query row of the layer loaded (got " + std::to_string(d.num_q) + " of " +
                      std::to_string(meta.q_pos.size()) + ")");
  std::vector<i64> rows(w);
  for (i64 i = 0; i < w; ++i) rows[i] = query_row(meta, end - w + i, who);
  return rows;
}

void window_probability_rows(const TraceMeta& meta, const LayerData& d, int h, const std::vector<i64>& rows,
                             i64 begin, i64 end, float* qw, float* probs) {
  const i64 w = static_cast<i64>(rows.size()), L = end - begin, m = L - w, dh = d.head_dim;
  const int G = d.num_heads / d.num_kv_heads;
  for (i64 i = 0; i < w; ++i) std::copy_n(d.q_row(h, rows[i]), dh, qw + i * dh);
  kernels::sgemm(false, true, w, L, dh, 1.0f, qw, dh, d.k_row(h / G, begin), dh, 0.0f, probs, L);
  const kernels::LogitSpec logit = meta.logits();
  for (i64 i = 0; i < w; ++i) {
    float* row = probs + i * L;
    kernels::logit_softmax_inplace(row, m + i + 1, logit);  // keys begin .. t, t = end - w + i
    std::fill(row + m + i + 1, row + L, 0.0f);
  }
}

avec<float> window_attention(const TraceMeta& meta, const LayerData& d, i64 begin, i64 end, i64 w, bool mean,
                             const std::string& who) {
  const i64 L = end - begin, m = L - w, dh = d.head_dim;
  const std::vector<i64> rows = window_query_rows(meta, d, begin, end, w, who);
  const kernels::LogitSpec logit = meta.logits();
  const int G = d.num_heads / d.num_kv_heads;
  avec<float> out(static_cast<std::size_t>(d.num_heads) * m, 0.0f);
#pragma omp parallel
  {
    avec<float> qw(w * dh), logits(w * L);
#pragma omp for schedule(dynamic)
    for (int h = 0; h < d.num_heads; ++h) {
      for (i64 i = 0; i < w; ++i) std::copy_n(d.q_row(h, rows[i]), dh, qw.data() + i * dh);
      // logits[i][j] = scale * q_i . k_{begin+j}
      kernels::sgemm(false, true, w, L, dh, logit.scale, qw.data(), dh, d.k_row(h / G, begin), dh, 0.0f, logits.data(), L);
      float* o = out.data() + h * m;
      for (i64 i = 0; i < w; ++i) {
        float* row = logits.data() + i * L;
        if (logit.softcap > 0) kernels::softcap_inplace(row, m + i + 1, logit.softcap);
        kernels::softmax_inplace(row, m + i + 1);  // keys begin .. t, t = end - w + i
        for (i64 j = 0; j < m; ++j) o[j] += row[j];
      }
      if (mean)
        for (i64 j = 0; j < m; ++j) o[j] /= static_cast<float>(w);
    }
  }
  return out;
}

std::shared_ptr<const avec<float>> WindowAttentionMemo::get(const TraceMeta& meta, const LayerData& d, i64 begin,
                                                           i64 end, i64 w, bool mean, const std::string& who) {
  const auto key = std::make_tuple(begin, end, w, mean);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
  }
  // Computed outside the lock (it is parallel inside); a concurrent duplicate is harmless.
  auto att = std::make_shared<const avec<float>>(window_attention(meta, d, begin, end, w, mean, who));
  std::lock_guard<std::mutex> lock(mu_);
  return memo_.emplace(key, std::move(att)).first->second;
}

QueryScoreRows attention_query_rows(const RuleInput& in, i64 begin, i64 first, std::vector<i64> rows, i64 m) {
  QueryScoreRows out;
  out.m = m;
  out.queries = static_cast<i64>(rows.size());
  const TraceMeta* meta = in.meta;
  const LayerData* d = in.data;
  out.fill = [meta, d, begin, first, m, rows = std::move(rows)](int h, i64 i0, i64 i1, float* dst) {
    const i64 b = i1 - i0, width = first + i1;  // keys [begin, begin + first + i1)
    const std::vector<i64> block(rows.begin() + i0, rows.begin() + i1);
    avec<float> qw(static_cast<std::size_t>(b * d->head_dim)), probs(static_cast<std::size_t>(b * width));
    window_probability_rows(*meta, *d, h, block, begin, begin + width, qw.data(), probs.data());
    const i64 n = std::min(m, width);  // columns past the block's last query are 0
    for (i64 i = 0; i < b; ++i) {
      std::copy_n(probs.data() + i * width, n, dst + i * m);
      std::fill(dst + i * m + n, dst + (i + 1) * m, 0.0f);
    }
  };
  return out;
}

QueryScoreRows window_attention_rows(const RuleInput& in, i64 begin, i64 end, i64 w, const std::string& who) {
  const i64 m = end - begin - w;
  return attention_query_rows(in, begin, m, window_query_rows(*in.meta, *in.data, begin, end, w, who), m);
}

}  // namespace kvsim
