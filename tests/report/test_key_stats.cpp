// kvsim analyze statistics against a brute-force float64 oracle on a random layer.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.h"
#include "report/key_stats.h"
#include "report/rank_stats.h"

using namespace kvsim;
using namespace kvsim::report;

namespace {

LayerData random_layer(int heads, int kv_heads, int d, i64 S, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  LayerData L;
  L.layer = 3;
  L.num_heads = heads;
  L.num_kv_heads = kv_heads;
  L.head_dim = d;
  L.hidden_size = heads * d;
  L.seq_len = S;
  L.num_q = S;  // every position stored
  L.q.resize(static_cast<std::size_t>(heads * S * d));
  L.k.resize(static_cast<std::size_t>(kv_heads * S * d));
  for (auto& x : L.q) x = 1.5f * nd(rng);
  for (auto& x : L.k) x = nd(rng) + 0.7f;  // a common direction, as real keys have
  return L;
}

std::vector<i64> top_by(const std::vector<double>& v, i64 n) {
  std::vector<i64> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](i64 a, i64 b) { return v[a] > v[b]; });
  idx.resize(n);
  return idx;
}

}  // namespace

TEST_CASE("parse_top_list: fractions of n_c and token counts") {
  const auto t = parse_top_list("0.1,16,0.001", 100);
  REQUIRE(t.size() == 3);
  CHECK(t[0].tokens == 10);
  CHECK(t[1].tokens == 16);
  CHECK(t[2].tokens == 1);  // at least one token
  CHECK(t[0].text == "0.1");
  CHECK_THROWS_AS(parse_top_list("0.1,,2", 100), kvsim::Error);
  CHECK_THROWS_AS(parse_top_list("-3", 100), kvsim::Error);
  CHECK_THROWS_AS(parse_top_list("2.5", 100), kvsim::Error);
}

TEST_CASE("keydiff_scores: -cos(k_j, mu), hand-computed") {
  // Keys (1,0), (0,1), (1,1): unit keys (1,0), (0,1), (.7071,.7071); mu = (.5690, .5690)
  // cos with mu: .7071, .7071, 1 -> scores -.7071, -.7071, -1
  const float keys[] = {1, 0, 0, 2, 3, 3};
  const auto s = keydiff_scores(keys, 3, 2);
  CHECK(s[0] == doctest::Approx(-std::sqrt(0.5)).epsilon(1e-12));
  CHECK(s[1] == doctest::Approx(-std::sqrt(0.5)).epsilon(1e-12));
  CHECK(s[2] == doctest::Approx(-1.0).epsilon(1e-12));
}

TEST_CASE("key_stats_for_layer matches a float64 brute force") {
  const int H = 4, G = 2, d = 8;
  const i64 S = 96, n_c = 70, window = 12;
  const LayerData L = random_layer(H, G, d, S, 11);
  std::vector<i64> q_pos(static_cast<std::size_t>(S));
  std::iota(q_pos.begin(), q_pos.end(), 0);
  KeyStatsOptions opt;
  opt.n_c = n_c;
  opt.window = window;
  opt.attn_scale = 1.0 / std::sqrt(static_cast<double>(d));
  opt.top = parse_top_list("0.1,0.3,20", n_c);
  const auto stats = key_stats_for_layer(L, q_pos, opt);
  REQUIRE(stats.size() == 2u * H);

  for (const auto& s : stats) {
    const int g = s.head / (H / G);
    CHECK(s.kv_head == g);
    CHECK(s.layer == 3);
    const i64 lo = s.eval == "queries" ? n_c : n_c - window, hi = s.eval == "queries" ? S : n_c;
    CHECK(s.n_queries == hi - lo);
    // Oracle: attention in float64, causal.
    std::vector<double> mean(static_cast<std::size_t>(n_c), 0.0);
    double m90 = 0, ent = 0, span_mass = 0;
    for (i64 t = lo; t < hi; ++t) {
      std::vector<double> logit(static_cast<std::size_t>(t + 1));
      double mx = -INFINITY;
      for (i64 j = 0; j <= t; ++j) {
        double acc = 0;
        for (int c = 0; c < d; ++c) acc += static_cast<double>(L.q_row(s.head, t)[c]) * L.k_row(g, j)[c];
        logit[j] = acc * opt.attn_scale;
        mx = std::max(mx, logit[j]);
      }
      double z = 0;
      for (auto& x : logit) z += (x = std::exp(x - mx));
      double mass = 0;
      std::vector<double> p;
      for (i64 j = 0; j < std::min(t + 1, n_c); ++j) {
        const double a = logit[j] / z;
        mean[j] += a / static_cast<double>(hi - lo);
        mass += a;
        p.push_back(a);
      }
      span_mass += mass / static_cast<double>(hi - lo);
      double e = 0;
      for (auto& x : p) { x /= mass; if (x > 0) e -= x * std::log(x); }
      std::sort(p.rbegin(), p.rend());
      double cum = 0;
      i64 k = 0;
      while (cum < 0.9 - 1e-12) cum += p[k++];
      m90 += static_cast<double>(k) / n_c / static_cast<double>(hi - lo);
      ent += e / static_cast<double>(hi - lo);
    }
    // Oracle: distinctiveness from the pairwise form -sum_i cos(k_j, k_i) (same ranking as -cos(k_j, mu)).
    std::vector<double> dist(static_cast<std::size_t>(n_c));
    for (i64 j = 0; j < n_c; ++j) {
      double sum = 0;
      for (i64 i = 0; i < n_c; ++i) {
        double dot = 0, nj = 0, ni = 0;
        for (int c = 0; c < d; ++c) {
          const double a = L.k_row(g, j)[c], b = L.k_row(g, i)[c];
          dot += a * b; nj += a * a; ni += b * b;
        }
        sum += dot / std::sqrt(nj * ni);
      }
      dist[j] = -sum;
    }
    CHECK(s.spearman == doctest::Approx(spearman(dist, mean)).epsilon(1e-9));
    CHECK(s.span_mass == doctest::Approx(span_mass).epsilon(1e-5));
    CHECK(s.entropy == doctest::Approx(ent).epsilon(1e-4));
    CHECK(s.entropy_norm == doctest::Approx(ent / std::log(static_cast<double>(n_c))).epsilon(1e-4));
    CHECK(s.mass_frac_90 == doctest::Approx(m90).epsilon(1e-9));
    REQUIRE(s.recall.size() == opt.top.size());
    for (std::size_t k = 0; k < opt.top.size(); ++k) {
      const auto a = top_by(mean, opt.top[k].tokens), b = top_by(dist, opt.top[k].tokens);
      double hit = 0;
      for (i64 x : a) hit += std::count(b.begin(), b.end(), x);
      CHECK(s.recall[k] == doctest::Approx(hit / static_cast<double>(opt.top[k].tokens)));
    }
  }
}

TEST_CASE("key_stats_for_layer: the window set is absent when its queries are not stored") {
  const LayerData full = random_layer(2, 1, 4, 40, 5);
  LayerData L = full;
  // Keep only the query rows of positions 30..39 (evaluation queries for n_c = 30).
  L.num_q = 10;
  L.q.clear();
  for (int h = 0; h < 2; ++h)
    for (i64 t = 30; t < 40; ++t) L.q.insert(L.q.end(), full.q_row(h, t), full.q_row(h, t) + 4);
  std::vector<i64> q_pos;
  for (i64 t = 30; t < 40; ++t) q_pos.push_back(t);
  KeyStatsOptions opt;
  opt.n_c = 30;
  opt.window = 8;
  opt.attn_scale = 0.5;
  opt.top = parse_top_list("5", 30);
  const auto stats = key_stats_for_layer(L, q_pos, opt);
  REQUIRE(stats.size() == 2);
  CHECK(stats[0].eval == "queries");
  CHECK(stats[0].n_queries == 10);
  opt.n_c = 50;
  CHECK_THROWS_AS(key_stats_for_layer(L, q_pos, opt), kvsim::Error);
}
