#include "prefill/prefill_metrics.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "kernels/kernels.h"

namespace kvsim::prefill {

void MetricSums::add(double F, double pl1, double pl2, double rl1, double rl2, double rec) {
  ++n;
  retained += F;
  retained_min = std::min(retained_min, F);
  l1 += pl1;
  l1_max = std::max(l1_max, pl1);
  l2 += pl2;
  l2_max = std::max(l2_max, pl2);
  rel_l1 += rl1;
  rel_l2 += rl2;
  recall += rec;
}

void MetricSums::merge(const MetricSums& o) {
  n += o.n;
  retained += o.retained;
  retained_min = std::min(retained_min, o.retained_min);
  l1 += o.l1;
  l1_max = std::max(l1_max, o.l1_max);
  l2 += o.l2;
  l2_max = std::max(l2_max, o.l2_max);
  rel_l1 += o.rel_l1;
  rel_l2 += o.rel_l2;
  recall += o.recall;
}

namespace {

constexpr i64 kRows = 32;  // queries per work item

double norm1(const float* x, i64 n) {
  double s = 0;
  for (i64 i = 0; i < n; ++i) s += std::fabs(static_cast<double>(x[i]));
  return s;
}
double norm2(const float* x, i64 n) {
  double s = 0;
  for (i64 i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return std::sqrt(s);
}
double ratio(double a, double b) { return b > 0 ? a / b : 0.0; }

// Head output rows [rows][d] mapped to the layer output space [rows][D]: through W_o^h, or
// into the head's slot of the concatenation when the trace has no o_proj.
void project(const float* head_rows, i64 rows, int d, int h, int H, const OutProj& wo, float* dst) {
  if (wo.w) {
    kernels::sgemm(false, true, rows, wo.hidden, d, 1.0f, head_rows, d, wo.w + h * d, static_cast<i64>(H) * d,
                   0.0f, dst, wo.hidden);
  } else {
    const i64 D = static_cast<i64>(H) * d;
    for (i64 r = 0; r < rows; ++r) {
      std::fill(dst + r * D, dst + (r + 1) * D, 0.0f);
      std::copy(head_rows + r * d, head_rows + (r + 1) * d, dst + r * D + h * d);
    }
  }
}

}  // namespace

std::vector<LayerMetrics> simulate_layer(const HeadsView& x, const OutProj& wo,
                                         const std::vector<const BlockSelection*>& selections) {
  if (selections.empty()) return {};
  const SegmentPlan& plan = selections.front()->plan();
  const std::size_t nsel = selections.size();
  const int H = x.num_heads, d = x.head_dim, G = x.group_size();
  const i64 D = wo.w ? wo.hidden : static_cast<i64>(H) * d;
  const i64 bs = plan.config().block, K = plan.config().top_k();

  std::vector<LayerMetrics> result(nsel);
  for (std::size_t i = 0; i < nsel; ++i) {
    result[i].heads.resize(static_cast<std::size_t>(H));
    result[i].pair_reduction =
        static_cast<double>(x.num_kv_heads) * plan.dense_pairs() / selections[i]->attended_pairs();
    double keys = 0;
    for (int g = 0; g < x.num_kv_heads; ++g)
      for (i64 s = 0; s < plan.num_segments(); ++s) {
        const SegmentInfo& seg = plan.segment(s);
        if (seg.dense) continue;
        const double len = static_cast<double>(seg.len());
        keys += len * static_cast<double>(selections[i]->blocks(g, s).size() * bs) + 0.5 * len * (len + 1);
      }
    const double nq = static_cast<double>(plan.num_sparse_queries()) * x.num_kv_heads;
    result[i].kept_keys_mean = nq > 0 ? keys / nq : 0.0;
  }

  struct Item { i64 s, t0; };
  std::vector<Item> items;
  for (i64 s = plan.num_segments() - 1; s >= 0; --s)
    if (!plan.segment(s).dense)
      for (i64 t0 = plan.segment(s).start; t0 < plan.segment(s).end; t0 += kRows) items.push_back({s, t0});

  // Sums per work item, merged in item order afterwards: the result does not depend on which
  // thread ran which item (identical for any thread count).
  std::vector<std::vector<std::vector<MetricSums>>> item_heads(
      items.size(), std::vector<std::vector<MetricSums>>(nsel, std::vector<MetricSums>(static_cast<std::size_t>(H))));
  std::vector<std::vector<MetricSums>> item_layer(items.size(), std::vector<MetricSums>(nsel));
#pragma omp parallel
  {
    avec<float> A, Am, ofull(kRows * d), okept(kRows * d), delta(kRows * d), masses;
    avec<float> yh(static_cast<std::size_t>(kRows * D)), dh(static_cast<std::size_t>(kRows * D)),
        y(static_cast<std::size_t>(kRows * D));
    std::vector<avec<float>> dlayer(nsel, avec<float>(static_cast<std::size_t>(kRows * D)));
    std::vector<std::uint8_t> mask, ones;
    std::vector<i64> top(static_cast<std::size_t>(std::max<i64>(K, 1)));
    std::vector<double> F_row(kRows), rec_row(kRows), full_sum(kRows);
    std::vector<std::vector<double>> F_sum(nsel, std::vector<double>(kRows)), rec_sum = F_sum;
    std::vector<std::vector<std::uint8_t>> chosen_block(nsel);

#pragma omp for schedule(dynamic, 1)
    for (std::size_t it = 0; it < items.size(); ++it) {
      const auto [s, t0] = items[it];
      auto& heads = item_heads[it];
      auto& layer = item_layer[it];
      const SegmentInfo& seg = plan.segment(s);
      const i64 t1 = std::min(t0 + kRows, seg.end), rows = t1 - t0, nk = t1, E = seg.eligible_blocks;
      A.resize(static_cast<std::size_t>(rows * nk));
      Am.resize(A.size());
      masses.resize(static_cast<std::size_t>(rows * std::max<i64>(E, 1)));
      mask.resize(static_cast<std::size_t>(nk));
      ones.assign(static_cast<std::size_t>(nk), 1);
      std::fill(y.begin(), y.end(), 0.0f);
      for (std::size_t i = 0; i < nsel; ++i) {
        std::fill(dlayer[i].begin(), dlayer[i].end(), 0.0f);
        std::fill(F_sum[i].begin(), F_sum[i].end(), 0.0);
        std::fill(rec_sum[i].begin(), rec_sum[i].end(), 0.0);
      }
      for (int h = 0; h < H; ++h) {
        const int g = h / G;
        // Full causal attention of the rows: probabilities over keys [0, t], zero after.
        kernels::sgemm(false, true, rows, nk, d, 1.0f, x.q_row(h, t0), d, x.k_row(g, 0), d, 0.0f, A.data(), nk);
        for (i64 r = 0; r < rows; ++r) {
          float* a = A.data() + r * nk;
          kernels::scaled_softmax_inplace(a, t0 + r + 1, x.scale);
          std::fill(a + t0 + r + 1, a + nk, 0.0f);
        }
        kernels::sgemm(false, false, rows, d, nk, 1.0f, A.data(), nk, x.v_row(g, 0), d, 0.0f, ofull.data(), d);
        // Normalise with the same summation the kept sets use, so that keeping every key gives
        // F = 1 and a zero perturbation bit for bit.
        for (i64 r = 0; r < rows; ++r) {
          full_sum[r] = kernels::masked_sum(A.data() + r * nk, ones.data(), nk);
          for (int c = 0; c < d; ++c) ofull[r * d + c] = static_cast<float>(ofull[r * d + c] / full_sum[r]);
        }
        project(ofull.data(), rows, d, h, H, wo, yh.data());
        for (std::size_t e = 0; e < static_cast<std::size_t>(rows * D); ++e) y[e] += yh[e];
        // Block masses over the eligible blocks and each query's true top-K mass.
        for (i64 r = 0; r < rows; ++r) {
          const float* a = A.data() + r * nk;
          float* m = masses.data() + r * E;
          for (i64 b = 0; b < E; ++b) m[b] = kernels::sum(a + b * bs, bs);
        }
        for (std::size_t i = 0; i < nsel; ++i) {
          const auto& blocks = selections[i]->blocks(g, s);
          chosen_block[i].assign(static_cast<std::size_t>(E), 0);
          std::fill(mask.begin(), mask.end(), 0);
          for (std::int32_t b : blocks) {
            chosen_block[i][static_cast<std::size_t>(b)] = 1;
            std::fill(mask.begin() + b * bs, mask.begin() + (b + 1) * bs, 1);
          }
          std::fill(mask.begin() + seg.start, mask.end(), 1);
          for (i64 e = 0; e < rows * nk; ++e) Am[e] = mask[e % nk] ? A[e] : 0.0f;
          kernels::sgemm(false, false, rows, d, nk, 1.0f, Am.data(), nk, x.v_row(g, 0), d, 0.0f, okept.data(), d);
          for (i64 r = 0; r < rows; ++r) {
            const double kept = kernels::masked_sum(A.data() + r * nk, mask.data(), nk);
            const double F = kept / full_sum[r];
            for (int c = 0; c < d; ++c)
              delta[r * d + c] = ofull[r * d + c] - static_cast<float>(okept[r * d + c] / kept);
            // Block recall: share of the query's true top-K block mass inside the choice.
            const float* m = masses.data() + r * E;
            const i64 got = kernels::topk(m, E, K, top.data());
            double top_total = 0, covered = 0;
            for (i64 k = 0; k < got; ++k) {
              top_total += m[top[k]];
              if (chosen_block[i][static_cast<std::size_t>(top[k])]) covered += m[top[k]];
            }
            const double rec = top_total > 0 ? covered / top_total : 1.0;
            F_row[r] = F;
            rec_row[r] = rec;
            F_sum[i][r] += F;
            rec_sum[i][r] += rec;
          }
          project(delta.data(), rows, d, h, H, wo, dh.data());
          for (i64 r = 0; r < rows; ++r) {
            const float* dr = dh.data() + r * D;
            const float* yr = yh.data() + r * D;
            const double l1 = norm1(dr, D), l2 = norm2(dr, D);
            heads[i][h].add(F_row[r], l1, l2, ratio(l1, norm1(yr, D)), ratio(l2, norm2(yr, D)), rec_row[r]);
          }
          for (std::size_t e = 0; e < static_cast<std::size_t>(rows * D); ++e) dlayer[i][e] += dh[e];
        }
      }
      for (std::size_t i = 0; i < nsel; ++i)
        for (i64 r = 0; r < rows; ++r) {
          const float* dr = dlayer[i].data() + r * D;
          const float* yr = y.data() + r * D;
          const double l1 = norm1(dr, D), l2 = norm2(dr, D);
          layer[i].add(F_sum[i][r] / H, l1, l2, ratio(l1, norm1(yr, D)), ratio(l2, norm2(yr, D)),
                       rec_sum[i][r] / H);
        }
    }
  }
  for (std::size_t it = 0; it < items.size(); ++it)
    for (std::size_t i = 0; i < nsel; ++i) {
      for (int h = 0; h < H; ++h) result[i].heads[h].merge(item_heads[it][i][h]);
      result[i].layer_row.merge(item_layer[it][i]);
    }
  for (auto& lm : result) {
    // The layer row's minimum is over heads and queries, not over head means.
    for (const auto& hs : lm.heads) lm.layer_row.retained_min = std::min(lm.layer_row.retained_min, hs.retained_min);
  }
  return result;
}

}  // namespace kvsim::prefill
