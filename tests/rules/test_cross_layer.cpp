// Cross-layer rules (rules/rule.h LayerPlanner; rules doc 2.30-2.31): kvcompose and duo planned
// over every layer of a synthetic model, against float64 references written here from the
// papers' / kvpress's definitions (exact attention by ref_softmax_prefix, plain loops, double).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "core/error.h"
#include "rules/factory.h"
#include "rules/rope.h"
#include "rules/scored_rule.h"
#include "rules_reference.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

// KVCompose's per-KV-head scores of one layer: max over the question's queries of exact attention,
// group mean, plus the mean over KV heads.
Mat ref_kvcompose_scores(const TestLayer& L) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads;
  Mat s(d.num_kv_heads, std::vector<double>(L.n_c, 0.0));
  for (int h = 0; h < d.num_heads; ++h) {
    std::vector<double> top(L.n_c, 0.0);
    std::vector<i64> rows;  // the question's queries, else every evaluation query
    for (i64 r : L.eval_rows)
      if (L.meta.segment[L.meta.q_pos[r]] == kQuestion) rows.push_back(r);
    if (rows.empty()) rows = L.eval_rows;
    for (i64 r : rows) {
      const auto a = ref_softmax_prefix(L, h, L.meta.q_pos[r]);
      for (i64 j = 0; j < L.n_c; ++j) top[j] = std::max(top[j], a[j]);
    }
    for (i64 j = 0; j < L.n_c; ++j) s[h / G][j] += top[j] / G;
  }
  for (i64 j = 0; j < L.n_c; ++j) {
    double m = 0;
    for (const auto& row : s) m += row[j] / static_cast<double>(s.size());
    for (auto& row : s) row[j] += m;
  }
  return s;
}

// [layer][unit] KVCompose kept counts for a global share n_kept of the curves' items.
std::vector<std::vector<i64>> ref_kvcompose_counts(const std::vector<Mat>& S, bool structured, i64 n_kept) {
  std::vector<std::vector<double>> curves;  // structured: per layer; else per (layer, head)
  for (const Mat& layer : S) {
    std::vector<Mat::value_type> sorted = layer;
    for (auto& row : sorted) std::sort(row.rbegin(), row.rend());
    if (!structured) {
      for (auto& row : sorted) curves.push_back(row);
      continue;
    }
    std::vector<double> c(sorted[0].size(), 0.0);
    for (const auto& row : sorted)
      for (std::size_t i = 0; i < c.size(); ++i) c[i] += row[i] / static_cast<double>(sorted.size());
    curves.push_back(c);
  }
  if (structured)
    for (std::size_t k = 1; k < curves.size(); ++k)
      for (std::size_t i = 0; i < curves[0].size(); ++i) curves[0][i] = std::max(curves[0][i], curves[k][i]);
  std::vector<double> flat;
  for (const auto& c : curves) flat.insert(flat.end(), c.begin(), c.end());
  std::vector<i64> per_curve(curves.size(), 0);
  for (i64 k : ref_top(flat, n_kept)) ++per_curve[k / static_cast<i64>(curves[0].size())];
  std::vector<std::vector<i64>> out;
  const std::size_t units = S[0].size();
  for (std::size_t l = 0; l < S.size(); ++l) {
    std::vector<i64> c(units);
    for (std::size_t u = 0; u < units; ++u)
      c[u] = structured ? std::max<i64>(1, per_curve[l]) : per_curve[l * units + u];
    out.push_back(c);
  }
  return out;
}

// DuoAttention's on-the-fly score of every KV head of one layer (rules doc 2.31), in double.
std::vector<double> ref_duo_scores(const TestLayer& L, i64 q_len) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads, dh = d.head_dim;
  const Rope rope = Rope::from_meta(L.meta, d.layer);  // its angles and pair layout only
  auto turn = [&](std::vector<double> x, i64 t, double sign) {  // R_t x (sign 1) or R_t^T x (-1)
    for (int i = 0; i < rope.pairs(); ++i) {
      const double c = std::cos(rope.angle(i, t)), s = sign * std::sin(rope.angle(i, t));
      const double a = x[rope.a(i)], b = x[rope.b(i)];
      x[rope.a(i)] = a * c - b * s;
      x[rope.b(i)] = a * s + b * c;
    }
    return x;
  };
  auto mean_pre = [&](auto row) {
    std::vector<double> m(dh, 0.0);
    for (i64 t = 0; t < L.n_c; ++t) {
      const float* x = row(t);
      const auto pre = turn(std::vector<double>(x, x + dh), t, -1.0);
      for (int c = 0; c < dh; ++c) m[c] += pre[c] / static_cast<double>(L.n_c);
    }
    return m;
  };
  auto row_of = [&](i64 t) {
    return static_cast<i64>(std::find(L.meta.q_pos.begin(), L.meta.q_pos.end(), t) - L.meta.q_pos.begin());
  };
  std::vector<double> score(d.num_kv_heads, 0.0);
  for (int h = 0; h < d.num_heads; ++h) {
    const int g = h / G;
    const auto q = turn(mean_pre([&](i64 t) { return d.q.data() + (h * d.num_q + row_of(t)) * dh; }), q_len - 1, 1.0);
    const auto kbar = mean_pre([&](i64 t) { return d.k.data() + (g * d.seq_len + t) * dh; });
    std::vector<double> p(q_len);
    for (i64 j = 0; j < q_len; ++j) {
      const auto k = turn(kbar, j, 1.0);
      p[j] = std::inner_product(q.begin(), q.end(), k.begin(), 0.0) / std::sqrt(static_cast<double>(dh));
    }
    const double top = *std::max_element(p.begin(), p.end());
    double z = 0, cum = 0, area = 0;
    for (double& x : p) z += (x = std::exp(x - top));
    for (double x : p) area += (cum += x / z);
    score[g] += area / static_cast<double>(q_len) / G;
  }
  return score;
}

}  // namespace

TEST_CASE("kvcompose: planned counts and kept sets equal the float64 reference (structured and not)") {
  std::vector<std::vector<std::unique_ptr<TestLayer>>> models;
  models.push_back(synthetic_model(4, 2, 71));
  models.push_back(synthetic_model(4, 4, 72));
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";  // its layer 0 needs the max curve
  if (std::filesystem::exists(trace)) {
    models.emplace_back();
    for (int l = 0; l < 5; ++l) models.back().push_back(trace_test_layer(trace, l));
  }
  for (const auto& layers : models) {
    const int Hkv = layers[0]->data.num_kv_heads;
    std::vector<Mat> S;
    for (const auto& L : layers) S.push_back(ref_kvcompose_scores(*L));
    const i64 n = layers[0]->n_c, L = static_cast<i64>(layers.size());
    const std::vector<Budget> budgets = {Budget::parse("cr=0.75"), Budget::parse("0.5")};
    for (const bool structured : {true, false}) {
      CAPTURE(structured);
      const auto sels = planned_select(structured ? "kvcompose" : "kvcompose(structured=false)", layers, budgets);
      for (std::size_t b = 0; b < budgets.size(); ++b) {
        const i64 items = L * n * (structured ? 1 : Hkv);
        const i64 n_kept = b == 0 ? static_cast<i64>(items * 0.25) : items / 2;  // kvpress's int(items (1 - cr))
        const auto counts = ref_kvcompose_counts(S, structured, n_kept);
        i64 total = 0;
        for (std::size_t l = 0; l < layers.size(); ++l) {
          CAPTURE(l);
          const Masks want = [&] {
            Masks m(Hkv, std::vector<std::uint8_t>(n, 0));
            for (int g = 0; g < Hkv; ++g)
              for (i64 j : ref_top(S[l][g], counts[l][g])) m[g][j] = 1;
            return m;
          }();
          for (int g = 0; g < Hkv; ++g) {
            CHECK(sels[b][l].kept_count(g) == counts[l][g]);
            total += sels[b][l].kept_count(g);
            CHECK(std::equal(want[g].begin(), want[g].end(), sels[b][l].unit_mask(g)));
          }
        }
        if (structured) CHECK(total >= n_kept * Hkv);  // every head of a layer keeps the layer's count
        else CHECK(total == n_kept);
      }
    }
  }
}

TEST_CASE("duo: head scores, the global streaming choice and the matched count equal the float64 reference") {
  const auto layers = synthetic_model(4, 2, 73);
  const i64 n = layers[0]->n_c;
  std::vector<std::pair<double, int>> heads;  // (score, layer * Hkv + g)
  for (const auto& L : layers) {
    const auto s = ref_duo_scores(*L, 50);
    for (std::size_t g = 0; g < s.size(); ++g) heads.push_back({s[g], L->data.layer * 2 + static_cast<int>(g)});
  }
  std::stable_sort(heads.begin(), heads.end());
  for (std::size_t k = 1; k < heads.size(); ++k) REQUIRE(heads[k].first > heads[k - 1].first * (1 + 1e-6));
  const i64 sink = 16, recent = 64, ks = sink + recent, N = static_cast<i64>(heads.size());
  // ratio 0.25: round(8 x 0.25) = 2 streaming heads; budget 0.5 (matched): round((N n - N B) / (n - ks)).
  const i64 B = n / 2, matched = std::llround(static_cast<double>(N * n - N * B) / static_cast<double>(n - ks));
  for (const auto& [spec, streaming] :
       {std::pair<std::string, i64>{"duo(sink=16,recent=64,q_len=50,ratio=0.25)", 2},
        {"duo(sink=16,recent=64,q_len=50)", matched}}) {
    CAPTURE(spec);
    const auto sels = planned_select(spec, layers, {Budget::parse("0.5")});
    for (i64 k = 0; k < N; ++k) {
      const int l = heads[k].second / 2, g = heads[k].second % 2;
      const Selection& s = sels[0][l];
      const bool stream = k < streaming;
      for (i64 j = 0; j < n; ++j) CHECK(s.unit_mask(g)[j] == (!stream || j < sink || j >= n - recent));
    }
  }
  CHECK(matched > 0);
  CHECK(matched < N);
}

TEST_CASE("cross-layer rules refuse a selection without their plan, naming the rule") {
  const auto layers = synthetic_model(4, 2, 74);
  for (const std::string spec : {"kvcompose", "duo"}) {
    auto rule = make_rule(spec);
    CHECK_THROWS_WITH_AS(rule->select(layers[0]->input(), {Budget::parse("0.5")}),
                         doctest::Contains("allocates its budget across every layer of a run"), Error);
  }
}

TEST_CASE("global(base): the global top of every layer's base scores, protected tokens kept and counted") {
  const auto layers = synthetic_model(4, 2, 75);
  const i64 n = layers[0]->n_c;
  // The base's own scores (snapkv: checked against ref_snapkv elsewhere), ranked here in double.
  auto base = make_rule("snapkv(window=32)");
  std::vector<std::tuple<double, int, int, i64>> entries;  // (score, layer, unit, token)
  i64 protected_total = 0, units = 0;
  for (const auto& L : layers) {
    const UnitScores s = dynamic_cast<const ScoredRule&>(*base).scores(L->input());
    units = s.units;
    protected_total += s.n_protected * s.units;
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < n; ++j)
        if (!s.protect[j]) entries.emplace_back(s.unit(u)[j], L->data.layer, u, j);
  }
  std::stable_sort(entries.begin(), entries.end(),
                   [](const auto& a, const auto& b) { return std::get<0>(a) > std::get<0>(b); });
  const std::vector<Budget> budgets = {Budget::parse("0.1"), Budget::parse("cr=0.5")};
  const auto sels = planned_select("global(snapkv(window=32))", layers, budgets);
  for (std::size_t b = 0; b < budgets.size(); ++b) {
    const i64 items = static_cast<i64>(layers.size()) * units * n;
    const i64 total = b == 0 ? static_cast<i64>(std::floor(items * 0.1 * (1 + 1e-12))) : items / 2;
    std::vector<Masks> want(layers.size(), Masks(units, std::vector<std::uint8_t>(n, 0)));
    for (auto& m : want)
      for (auto& row : m)
        for (i64 j = n - 32; j < n; ++j) row[j] = 1;
    for (i64 k = 0; k < total - protected_total; ++k) {
      const auto& [score, l, u, j] = entries[k];
      want[l][u][j] = 1;
    }
    i64 kept = 0, per_layer_min = n, per_layer_max = 0;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      i64 layer_kept = 0;
      for (int u = 0; u < units; ++u) {
        CHECK(std::equal(want[l][u].begin(), want[l][u].end(), sels[b][l].unit_mask(u)));
        layer_kept += sels[b][l].kept_count(u);
      }
      kept += layer_kept;
      per_layer_min = std::min(per_layer_min, layer_kept);
      per_layer_max = std::max(per_layer_max, layer_kept);
    }
    CHECK(kept == total);
    CHECK(per_layer_max > per_layer_min);  // the layers did not all get the same share
  }
  CHECK_THROWS_WITH_AS(make_rule("global(knorm)"), doctest::Contains("must be a plain attention scorer"), Error);
}
