#include "rules/h2o_common.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace kvsim::rules_more {

i64 q_row(const TraceMeta& meta, i64 pos) {
  auto it = std::lower_bound(meta.q_pos.begin(), meta.q_pos.end(), pos);
  if (it == meta.q_pos.end() || *it != pos) return -1;
  return static_cast<i64>(it - meta.q_pos.begin());
}

std::vector<i64> require_q_rows(const TraceMeta& meta, i64 begin, i64 end, const std::string& rule,
                                const std::string& why) {
  std::vector<i64> rows;
  rows.reserve(static_cast<std::size_t>(std::max<i64>(0, end - begin)));
  for (i64 p = begin; p < end; ++p) {
    const i64 r = q_row(meta, p);
    if (r < 0)
      fail(meta.path.empty() ? "trace" : meta.path, "q_pos",
           rule + " needs the stored queries of positions [" + std::to_string(begin) + ", " + std::to_string(end) +
               ") (" + why + "), but position " + std::to_string(p) + " is missing");
    rows.push_back(r);
  }
  return rows;
}

void check_input(const RuleInput& in, const std::string& rule) {
  if (!in.meta || !in.data) throw Error(rule + ": rule input without trace data");
  const LayerData& d = *in.data;
  if (d.num_kv_heads <= 0 || d.num_heads % d.num_kv_heads != 0 || d.head_dim <= 0)
    fail(in.meta->path, "num_heads", rule + ": bad head layout");
  if (in.n_c < 1 || in.n_c > d.seq_len)
    throw Error(rule + ": compression point " + std::to_string(in.n_c) + " outside [1, " +
                std::to_string(d.seq_len) + "]");
  if (d.num_q != in.meta->num_queries())
    fail(in.meta->path, "q_pos", rule + ": layer holds " + std::to_string(d.num_q) + " query rows, /q_pos has " +
                                     std::to_string(in.meta->num_queries()));
}

std::vector<i64> eval_positions(const RuleInput& in) {
  std::vector<i64> pos;
  pos.reserve(in.eval_rows.size());
  for (i64 r : in.eval_rows) pos.push_back(in.meta->q_pos[static_cast<std::size_t>(r)]);
  return pos;
}

void keep_top(const float* score, i64 n, i64 k, const std::uint8_t* protect, std::uint8_t* mask) {
  std::vector<i64> free_idx;
  std::vector<float> free_score;
  i64 n_protected = 0;
  for (i64 j = 0; j < n; ++j) {
    if (protect && protect[j]) {
      mask[j] = 1;
      ++n_protected;
    } else {
      free_idx.push_back(j);
      free_score.push_back(score[j]);
    }
  }
  const i64 want = std::min<i64>(k - n_protected, static_cast<i64>(free_idx.size()));
  if (want <= 0) return;
  std::vector<i64> top(static_cast<std::size_t>(want));
  const i64 got = kernels::topk(free_score.data(), static_cast<i64>(free_score.size()), want, top.data());
  for (i64 i = 0; i < got; ++i) mask[free_idx[top[i]]] = 1;
}

std::vector<i64> top_positions(const std::vector<i64>& cand, const std::vector<double>& score_of_pos, i64 k) {
  if (k >= static_cast<i64>(cand.size())) return cand;
  std::vector<i64> order(cand.size());
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](i64 a, i64 b) {
    const double sa = score_of_pos[cand[a]], sb = score_of_pos[cand[b]];
    if (sa != sb) return sa > sb;
    return cand[a] < cand[b];
  };
  std::nth_element(order.begin(), order.begin() + k, order.end(), better);
  std::vector<i64> out;
  out.reserve(static_cast<std::size_t>(k));
  for (i64 i = 0; i < k; ++i) out.push_back(cand[order[i]]);
  std::sort(out.begin(), out.end());
  return out;
}

void subset_probs(const float* q, const float* keys, int d, const i64* pos, i64 m, const kernels::LogitSpec& logit,
                  float* out) {
  for (i64 i = 0; i < m; ++i) out[i] = kernels::dot(q, keys + pos[i] * d, d);
  if (m > 0) kernels::logit_softmax_inplace(out, m, logit);
}

}  // namespace kvsim::rules_more
