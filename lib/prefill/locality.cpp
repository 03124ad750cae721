#include "prefill/locality.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "core/splitmix.h"
#include "kernels/kernels.h"

namespace kvsim::prefill {

std::vector<i64> locality_anchors(const SegmentPlan& plan, int anchors) {
  const i64 bs = plan.config().block, K = plan.config().top_k();
  const i64 lo = (K + 1) * bs - 1, hi = plan.n() - 2;
  std::vector<i64> out;
  if (anchors <= 0 || K <= 0 || hi < lo) return out;
  for (int a = 0; a < anchors; ++a) {
    const i64 i = anchors == 1 ? lo : lo + (hi - lo) * a / (anchors - 1);
    if (out.empty() || out.back() != i) out.push_back(i);
  }
  return out;
}

i64 shuffled_partner(const SegmentPlan& plan, i64 i, int h, int p) {
  const i64 lo = (plan.config().top_k() + 1) * plan.config().block - 1, hi = plan.n() - 1;
  if (hi <= lo) return -1;  // no other query in the range
  const std::uint64_t z = splitmix64(splitmix64(splitmix64(static_cast<std::uint64_t>(i)) ^ static_cast<std::uint64_t>(h)) ^
                                     static_cast<std::uint64_t>(p));
  const i64 j = lo + static_cast<i64>(z % static_cast<std::uint64_t>(hi - lo));  // hi - lo choices without i
  return j >= i ? j + 1 : j;
}

double jaccard(std::vector<i64> a, std::vector<i64> b) {
  std::sort(a.begin(), a.end());
  std::sort(b.begin(), b.end());
  std::vector<i64> common;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(common));
  const double uni = static_cast<double>(a.size() + b.size() - common.size());
  return uni > 0 ? static_cast<double>(common.size()) / uni : 1.0;
}

std::vector<LocalityCurve> locality_curves(const HeadsView& x, const SegmentPlan& plan, int anchors) {
  const i64 S = plan.config().segment, bs = plan.config().block, K = plan.config().top_k(), n = plan.n();
  const int d = x.head_dim;
  const std::vector<i64> anchor = locality_anchors(plan, anchors);
  const i64 na = static_cast<i64>(anchor.size());
  std::vector<LocalityCurve> curves(static_cast<std::size_t>(x.num_heads));
  std::vector<std::vector<double>> sums(curves.size(), std::vector<double>(static_cast<std::size_t>(2 * S), 0.0));
  for (int h = 0; h < x.num_heads; ++h) {
    curves[h].head = h;
    curves[h].pairs.assign(static_cast<std::size_t>(2 * S), 0);
  }
  std::vector<std::vector<double>> per_anchor(static_cast<std::size_t>(x.num_heads * na));
  std::vector<std::vector<double>> shuffled(static_cast<std::size_t>(x.num_heads * na));
#pragma omp parallel
  {
    avec<float> A, masses, partner;
    std::vector<i64> top0(static_cast<std::size_t>(K)), top(static_cast<std::size_t>(K));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int h = 0; h < x.num_heads; ++h)
      for (i64 a = 0; a < na; ++a) {
        const int g = x.kv_head_of(h);
        const i64 i = anchor[static_cast<std::size_t>(a)], last = std::min(n - 1, i + 2 * S);
        const i64 rows = last - i + 1, nk = last + 1, vis = (i + 1) / bs;
        A.resize(static_cast<std::size_t>(rows * nk));
        masses.resize(static_cast<std::size_t>(rows * vis));
        kernels::sgemm(false, true, rows, nk, d, 1.0f, x.q_row(h, i), d, x.k_row(g, 0), d, 0.0f, A.data(), nk);
        for (i64 r = 0; r < rows; ++r) {
          float* row = A.data() + r * nk;
          kernels::scaled_softmax_inplace(row, i + r + 1, x.scale);
          for (i64 b = 0; b < vis; ++b) masses[r * vis + b] = kernels::sum(row + b * bs, bs);
        }
        const i64 k0 = kernels::topk(masses.data(), vis, K, top0.data());
        std::vector<i64> set0(top0.begin(), top0.begin() + k0);
        std::vector<double> local(static_cast<std::size_t>(rows - 1));
        for (i64 r = 1; r < rows; ++r) {
          const i64 k1 = kernels::topk(masses.data() + r * vis, vis, K, top.data());
          local[r - 1] = jaccard(set0, std::vector<i64>(top.begin(), top.begin() + k1));
        }
        per_anchor[static_cast<std::size_t>(h * na + a)] = std::move(local);
        // The shuffled baseline: anchor i against random far partners j, over the blocks both see.
        std::vector<double> far;
        for (int p = 0; p < kShuffledPartners; ++p) {
          const i64 j = shuffled_partner(plan, i, h, p);
          if (j < 0) break;
          const i64 both = (std::min(i, j) + 1) / bs;
          partner.resize(static_cast<std::size_t>(j + 1));
          kernels::sgemm(false, true, 1, j + 1, d, 1.0f, x.q_row(h, j), d, x.k_row(g, 0), d, 0.0f, partner.data(), j + 1);
          kernels::scaled_softmax_inplace(partner.data(), j + 1, x.scale);
          for (i64 b = 0; b < both; ++b) partner[b] = kernels::sum(partner.data() + b * bs, bs);  // in place: b*bs >= b
          const i64 ka = kernels::topk(masses.data(), both, K, top0.data());
          const i64 kb = kernels::topk(partner.data(), both, K, top.data());
          far.push_back(jaccard(std::vector<i64>(top0.begin(), top0.begin() + ka),
                                std::vector<i64>(top.begin(), top.begin() + kb)));
        }
        shuffled[static_cast<std::size_t>(h * na + a)] = std::move(far);
      }
  }
  // Summed in anchor order, whatever thread computed each anchor (identical for any thread count).
  for (int h = 0; h < x.num_heads; ++h)
    for (i64 a = 0; a < na; ++a) {
      const auto& local = per_anchor[static_cast<std::size_t>(h * na + a)];
      for (std::size_t r = 0; r < local.size(); ++r) {
        sums[h][r] += local[r];
        curves[h].pairs[r] += 1;
      }
      for (double v : shuffled[static_cast<std::size_t>(h * na + a)]) {
        curves[h].shuffled += v;
        curves[h].shuffled_pairs += 1;
      }
    }
  for (int h = 0; h < x.num_heads; ++h) {
    curves[h].jaccard.resize(static_cast<std::size_t>(2 * S));
    for (i64 dl = 0; dl < 2 * S; ++dl)
      curves[h].jaccard[dl] = curves[h].pairs[dl] > 0 ? sums[h][dl] / curves[h].pairs[dl] : std::nan("");
    curves[h].shuffled = curves[h].shuffled_pairs > 0 ? curves[h].shuffled / curves[h].shuffled_pairs : std::nan("");
  }
  return curves;
}

}  // namespace kvsim::prefill
