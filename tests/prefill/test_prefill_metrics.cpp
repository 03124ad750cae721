#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "prefill/criticality.h"
#include "prefill/locality.h"
#include "prefill/prefill_metrics.h"
#include "random_layer.h"

using namespace kvsim;
using namespace kvsim::prefill;

namespace {

PrefillConfig cfg_small() {
  PrefillConfig c;
  c.segment = 32;
  c.block = 8;
  c.budget = 24;  // K = 3
  c.threshold = 32;
  return c;
}

// Float64 oracle of the per-query metrics of one head, for checking simulate_layer.
struct Oracle {
  double F, l1, l2, rl1, rl2, recall;
  std::vector<double> delta_proj;  // [D]
};

Oracle oracle(const HeadsView& x, const avec<float>& W, int D, const BlockSelection& sel, int h, i64 t) {
  const SegmentPlan& plan = sel.plan();
  const int g = x.kv_head_of(h), d = x.head_dim, H = x.num_heads;
  const i64 s = plan.segment_of(t), start = plan.segment(s).start, bs = plan.config().block;
  std::vector<double> a(static_cast<std::size_t>(t + 1));
  double mx = -INFINITY, tot = 0;
  for (i64 j = 0; j <= t; ++j) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += double(x.q_row(h, t)[c]) * x.k_row(g, j)[c];
    a[j] = dot * x.scale;
    mx = std::max(mx, a[j]);
  }
  for (auto& e : a) tot += (e = std::exp(e - mx));
  for (auto& e : a) e /= tot;
  std::vector<char> keep(a.size(), 0);
  for (auto b : sel.blocks(g, s)) std::fill(keep.begin() + b * bs, keep.begin() + (b + 1) * bs, 1);
  std::fill(keep.begin() + start, keep.end(), 1);
  double F = 0;
  for (std::size_t j = 0; j < a.size(); ++j) F += keep[j] ? a[j] : 0;
  std::vector<double> delta(d, 0.0), o(d, 0.0);
  for (std::size_t j = 0; j < a.size(); ++j)
    for (int c = 0; c < d; ++c) {
      o[c] += a[j] * x.v_row(g, j)[c];
      delta[c] += (a[j] - (keep[j] ? a[j] / F : 0.0)) * x.v_row(g, j)[c];
    }
  Oracle r{F, 0, 0, 0, 0, 0, std::vector<double>(D, 0.0)};
  double y1 = 0, y2 = 0;
  for (int e = 0; e < D; ++e) {
    double de = 0, ye = 0;
    for (int c = 0; c < d; ++c) {
      de += delta[c] * W[e * H * d + h * d + c];
      ye += o[c] * W[e * H * d + h * d + c];
    }
    r.delta_proj[e] = de;
    r.l1 += std::fabs(de);
    r.l2 += de * de;
    y1 += std::fabs(ye);
    y2 += ye * ye;
  }
  r.l2 = std::sqrt(r.l2);
  r.rl1 = r.l1 / y1;
  r.rl2 = r.l2 / std::sqrt(y2);
  // Block recall: share of the true top-K block mass (eligible blocks) inside the choice.
  const i64 E = plan.segment(s).eligible_blocks, K = plan.config().top_k();
  std::vector<double> mass(E, 0.0);
  for (i64 b = 0; b < E; ++b)
    for (i64 j = b * bs; j < (b + 1) * bs; ++j) mass[b] += a[j];
  std::vector<i64> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](i64 p, i64 q) { return mass[p] > mass[q]; });
  double top = 0, cov = 0;
  const auto& chosen = sel.blocks(g, s);
  for (i64 k = 0; k < std::min(K, E); ++k) {
    top += mass[order[k]];
    if (std::find(chosen.begin(), chosen.end(), order[k]) != chosen.end()) cov += mass[order[k]];
  }
  r.recall = top > 0 ? cov / top : 1.0;
  return r;
}

}  // namespace

TEST_CASE("simulation: a budget covering every block reproduces dense attention exactly") {
  test::RandomLayer L(4, 2, 16, 150, 21, 2.0f);
  PrefillConfig c = cfg_small();
  c.budget = 1 << 20;  // K larger than any segment's eligible block count
  const SegmentPlan plan(150, c);
  REQUIRE(plan.num_sparse_queries() > 0);
  const BlockSelection sel = select_blocks(plan, estimate_criticality(L.view, plan));
  const auto m = simulate_layer(L.view, OutProj{}, {&sel});
  REQUIRE(m.size() == 1);
  CHECK(m[0].layer_row.n == plan.num_sparse_queries());
  for (const auto& h : m[0].heads) {
    CHECK(h.n == plan.num_sparse_queries());
    CHECK(h.retained == static_cast<double>(h.n));  // F = 1 for every query, exactly
    CHECK(h.retained_min == 1.0);
    CHECK(h.l1_max == 0.0);
    CHECK(h.l2_max == 0.0);
    CHECK(h.recall == static_cast<double>(h.n));
  }
  CHECK(m[0].layer_row.l1_max == 0.0);
  CHECK(m[0].pair_reduction == doctest::Approx(1.0));
}

TEST_CASE("simulation: matches a float64 oracle (through o_proj), fusion variants separately") {
  const int H = 4, Hkv = 2, d = 16, D = 24;
  const i64 n = 140;
  test::RandomLayer L(H, Hkv, d, n, 33, 2.5f);
  avec<float> W(static_cast<std::size_t>(D * H * d));
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 0.3f);
  for (auto& e : W) e = nd(rng);
  const SegmentPlan plan(n, cfg_small());
  const CriticalityMap cur = estimate_criticality(L.view, plan);
  CriticalityMap other = cur;
  std::reverse(other.p.begin(), other.p.end());  // some different, still causal-valid choice
  for (int g = 0; g < Hkv; ++g)
    for (i64 s = 0; s < other.num_segments; ++s)
      std::fill(other.row(g, s) + s * plan.config().blocks_per_segment(), other.row(g, s) + other.num_blocks, 0.0f);
  const BlockSelection a = select_blocks(plan, cur), b = select_blocks(plan, other);
  const auto m = simulate_layer(L.view, OutProj{W.data(), D}, {&a, &b});
  REQUIRE(m.size() == 2);
  const BlockSelection* sels[2] = {&a, &b};
  for (int v = 0; v < 2; ++v) {
    MetricSums layer;
    std::vector<MetricSums> heads(H);
    for (const auto& seg : plan.segments()) {
      if (seg.dense) continue;
      for (i64 t = seg.start; t < seg.end; ++t) {
        std::vector<double> sum(D, 0.0);
        double Fs = 0, recs = 0;
        for (int h = 0; h < H; ++h) {
          const Oracle o = oracle(L.view, W, D, *sels[v], h, t);
          heads[h].add(o.F, o.l1, o.l2, o.rl1, o.rl2, o.recall);
          for (int e = 0; e < D; ++e) sum[e] += o.delta_proj[e];
          Fs += o.F;
          recs += o.recall;
        }
        double l1 = 0, l2 = 0;
        for (double e : sum) l1 += std::fabs(e), l2 += e * e;
        layer.add(Fs / H, l1, std::sqrt(l2), 0, 0, recs / H);
      }
    }
    for (int h = 0; h < H; ++h) {
      const auto& got = m[v].heads[h];
      REQUIRE(got.n == heads[h].n);
      CHECK(got.retained == doctest::Approx(heads[h].retained).epsilon(1e-5));
      CHECK(got.retained_min == doctest::Approx(heads[h].retained_min).epsilon(1e-4));
      CHECK(got.l1 == doctest::Approx(heads[h].l1).epsilon(1e-4));
      CHECK(got.l2_max == doctest::Approx(heads[h].l2_max).epsilon(1e-4));
      CHECK(got.rel_l2 == doctest::Approx(heads[h].rel_l2).epsilon(1e-4));
      CHECK(got.recall == doctest::Approx(heads[h].recall).epsilon(1e-5));
    }
    CHECK(m[v].layer_row.l1 == doctest::Approx(layer.l1).epsilon(1e-4));
    CHECK(m[v].layer_row.l2_max == doctest::Approx(layer.l2_max).epsilon(1e-4));
    CHECK(m[v].layer_row.retained == doctest::Approx(layer.retained).epsilon(1e-5));
    CHECK(m[v].layer_row.recall == doctest::Approx(layer.recall).epsilon(1e-5));
    CHECK(m[v].pair_reduction == doctest::Approx(Hkv * plan.dense_pairs() / sels[v]->attended_pairs()));
  }
  // The two selections really differ, so the variants are not trivially equal.
  CHECK(m[0].heads[0].l1 != m[1].heads[0].l1);
}

TEST_CASE("locality: Jaccard helper and curves in [0, 1], J = 1 for identical queries") {
  CHECK(jaccard({1, 2, 3}, {3, 2, 1}) == 1.0);
  CHECK(jaccard({1, 2, 3}, {3, 4, 5}) == doctest::Approx(1.0 / 5.0));
  CHECK(jaccard({}, {}) == 1.0);
  PrefillConfig c = cfg_small();
  const i64 n = 160;
  test::RandomLayer L(2, 1, 16, n, 8, 3.0f);
  // Head 1: the same query at every position, so every top-K set equals the anchor's.
  for (i64 t = 0; t < n; ++t) std::copy(L.view.q_row(1, 0), L.view.q_row(1, 0) + 16, L.q.data() + (n + t) * 16);
  const SegmentPlan plan(n, c);
  const auto anchors = locality_anchors(plan, 4);
  REQUIRE(anchors.size() == 4);
  CHECK(anchors.front() == (c.top_k() + 1) * c.block - 1);
  CHECK(anchors.back() == n - 2);
  const auto curves = locality_curves(L.view, plan, 4);
  REQUIRE(curves.size() == 2);
  CHECK(curves[0].pairs[0] == 4);  // every anchor has a successor
  CHECK(curves[0].pairs[2 * c.segment - 1] < 4);  // late anchors run out of room
  for (std::size_t i = 0; i < curves[0].jaccard.size(); ++i) {
    if (curves[0].pairs[i] == 0) continue;
    CHECK(curves[0].jaccard[i] >= 0.0);
    CHECK(curves[0].jaccard[i] <= 1.0);
    CHECK(curves[1].jaccard[i] == 1.0);
  }
}

// Float64 top-K block set of query t of head h over the first `blocks` blocks of its own softmax.
static std::vector<i64> top_blocks_f64(const HeadsView& x, int h, i64 t, i64 blocks, i64 bs, i64 K) {
  const int g = x.kv_head_of(h), d = x.head_dim;
  std::vector<double> a(static_cast<std::size_t>(t + 1));
  double mx = -INFINITY, tot = 0;
  for (i64 j = 0; j <= t; ++j) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += double(x.q_row(h, t)[c]) * x.k_row(g, j)[c];
    mx = std::max(mx, a[j] = dot * x.scale);
  }
  for (auto& e : a) tot += (e = std::exp(e - mx));
  std::vector<double> mass(static_cast<std::size_t>(blocks), 0.0);
  for (i64 b = 0; b < blocks; ++b)
    for (i64 j = b * bs; j < (b + 1) * bs; ++j) mass[b] += a[j] / tot;
  std::vector<i64> idx(static_cast<std::size_t>(blocks));
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + K, idx.end(), [&](i64 p, i64 q) { return mass[p] > mass[q]; });
  idx.resize(static_cast<std::size_t>(K));
  return idx;
}

TEST_CASE("locality: the shuffled baseline equals a float64 recount over the same random partners") {
  PrefillConfig c = cfg_small();
  const i64 n = 200, bs = c.block, K = c.top_k();
  test::RandomLayer L(2, 1, 16, n, 8, 3.0f);
  for (i64 t = 0; t < n; ++t) std::copy(L.view.q_row(1, 0), L.view.q_row(1, 0) + 16, L.q.data() + (n + t) * 16);
  const SegmentPlan plan(n, c);
  const auto anchors = locality_anchors(plan, 5);
  const auto curves = locality_curves(L.view, plan, 5);
  const i64 lo = (K + 1) * bs - 1;
  double sum = 0;
  i64 pairs = 0;
  for (i64 i : anchors)
    for (int p = 0; p < kShuffledPartners; ++p) {
      const i64 j = shuffled_partner(plan, i, 0, p);
      CHECK(j >= lo);
      CHECK(j <= n - 1);
      CHECK(j != i);
      CHECK(j == shuffled_partner(plan, i, 0, p));  // a pure function of its coordinates
      const i64 both = (std::min(i, j) + 1) / bs;
      sum += jaccard(top_blocks_f64(L.view, 0, i, both, bs, K), top_blocks_f64(L.view, 0, j, both, bs, K));
      ++pairs;
    }
  CHECK(curves[0].shuffled_pairs == pairs);
  CHECK(curves[0].shuffled == doctest::Approx(sum / pairs).epsilon(1e-12));
  CHECK(curves[0].shuffled < 1.0);  // random queries do not share their block sets
  CHECK(curves[1].shuffled == 1.0);  // one query everywhere: every pair agrees
  // Partners spread over the range rather than clustering near the anchor.
  std::vector<i64> seen;
  for (int p = 0; p < kShuffledPartners; ++p) seen.push_back(shuffled_partner(plan, anchors[2], 0, p));
  std::sort(seen.begin(), seen.end());
  CHECK(std::unique(seen.begin(), seen.end()) - seen.begin() >= kShuffledPartners - 2);
}
