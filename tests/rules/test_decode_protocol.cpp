// The decode protocol (replay/decode_protocol.h, rules doc 1.9) against float64 re-enactments
// written here: the cache of every KV head followed through the generation, cut at each
// compression by the rule's definition on that head's own tokens (knorm; snapkv without pooling,
// its window attention over the head's cached keys only), every evaluation query's mask compared.
// Then the protocol's invariants on rules whose heads keep different counts (Ada-KV, the union
// view) and on step-wise rules: an evicted token never returns, budgets hold at every compression.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "core/error.h"
#include "quant/kv_quant.h"
#include "quant/quantized_kv.h"
#include "replay/decode_protocol.h"
#include "rules/budget.h"
#include "rules/factory.h"
#include "rules_reference.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

// A 2-layer model: 4 heads, 2 KV heads, 352 context + 8 question + 40 generated positions.
SynthOptions decode_model(std::uint64_t seed) {
  SynthOptions o;
  o.num_layers = 2;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.head_dim = 16;
  o.hidden_size = 48;
  o.seq_len = 400;
  o.question_len = 8;
  o.gen_len = 40;
  o.all_queries = true;
  o.seed = seed;
  return o;
}

std::unique_ptr<TestLayer> decode_layer(std::uint64_t seed) { return synthetic_test_layer(decode_model(seed), 1); }

using Cache = std::vector<std::vector<i64>>;  // [KV head] cached positions

// One compression of head g's tokens `held` to `keep` by float64 scores (higher kept, ties to
// the lower position), the last `protect` tokens always kept.
std::vector<i64> keep_best(const std::vector<i64>& held, const std::vector<double>& score, i64 keep, i64 protect) {
  const i64 n = static_cast<i64>(held.size());
  if (keep >= n) return held;
  std::vector<i64> idx;
  for (i64 i = 0; i < n - protect; ++i) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](i64 a, i64 b) { return score[a] > score[b]; });
  std::vector<std::uint8_t> k(n, 0);
  for (i64 i = 0; i < keep - protect; ++i) k[idx[i]] = 1;
  for (i64 i = n - protect; i < n; ++i) k[i] = 1;
  std::vector<i64> out;
  for (i64 i = 0; i < n; ++i)
    if (k[i]) out.push_back(held[i]);
  return out;
}

double key_norm(const LayerData& D, int g, i64 t) {
  double s = 0;
  for (int c = 0; c < D.head_dim; ++c) s += static_cast<double>(D.k_row(g, t)[c]) * D.k_row(g, t)[c];
  return std::sqrt(s);
}

// knorm's cut of head g's tokens: the `keep` lowest key norms.
auto knorm_cut(const TestLayer& L) {
  return [&L](int g, const std::vector<i64>& held, i64 keep) {
    std::vector<double> s;
    for (i64 t : held) s.push_back(-key_norm(L.data, g, t));
    return keep_best(held, s, keep, 0);
  };
}

// snapkv(window=w, kernel=1), group mean, on one head's cache: each window query (the last w
// tokens, all generated since the last cut) attends to the head's cached tokens up to itself.
std::vector<double> snap_scores(const TestLayer& L, int g, const std::vector<i64>& held, i64 w) {
  const LayerData& D = L.data;
  const int G = D.num_heads / D.num_kv_heads, d = D.head_dim;
  const i64 n = static_cast<i64>(held.size()), m = n - w;
  std::vector<double> s(m, 0.0);
  for (int h = g * G; h < (g + 1) * G; ++h)
    for (i64 i = m; i < n; ++i) {
      const i64 t = held[i];
      const i64 row = std::lower_bound(L.meta.q_pos.begin(), L.meta.q_pos.end(), t) - L.meta.q_pos.begin();
      std::vector<double> logit;
      for (i64 j = 0; j <= i; ++j) {
        double x = 0;
        for (int c = 0; c < d; ++c) x += static_cast<double>(D.q_row(h, row)[c]) * D.k_row(g, held[j])[c];
        logit.push_back(x / std::sqrt(static_cast<double>(d)));
      }
      const double top = *std::max_element(logit.begin(), logit.end());
      double z = 0;
      for (double& x : logit) z += (x = std::exp(x - top));
      for (i64 j = 0; j < m; ++j) s[j] += logit[j] / z / (G * w);
    }
  return s;
}

// The decode protocol re-enacted: [KV head][eval query] masks.
template <class Cut>
std::vector<std::vector<std::vector<std::uint8_t>>> reenact(const TestLayer& L, i64 every, bool start_compressed,
                                                            const Budget& b, Cut cut, bool append_only = false) {
  const int Hkv = L.data.num_kv_heads;
  const i64 n0 = L.n_c;
  std::vector<i64> eval;
  for (i64 r : L.eval_rows) eval.push_back(L.meta.q_pos[r]);
  Cache cache(Hkv);
  for (int g = 0; g < Hkv; ++g) {
    for (i64 t = 0; t < n0; ++t) cache[g].push_back(t);
    if (start_compressed) cache[g] = cut(g, cache[g], b.tokens_for(n0));
  }
  std::vector<std::vector<std::vector<std::uint8_t>>> masks(Hkv);
  i64 from = n0, next = n0 + every;
  for (i64 t : eval) {
    if (t >= next) {  // compress at L = next: what each head holds plus [from, L)
      const i64 Lc = next;
      for (int g = 0; g < Hkv; ++g) {
        for (i64 p = from; p < Lc; ++p) cache[g].push_back(p);
        const i64 keep = b.kind == Budget::Kind::tokens ? static_cast<i64>(b.value) : b.tokens_for(Lc);
        const std::vector<i64> held = cache[g], kept = cut(g, held, keep);
        if (!append_only) {
          cache[g] = kept;
        } else {  // the old tokens all stay; a new one enters where the cut kept it
          cache[g].clear();
          for (i64 p : held)
            if (p < from || std::count(kept.begin(), kept.end(), p)) cache[g].push_back(p);
        }
      }
      from = Lc;
      next += every;
    }
    for (int g = 0; g < Hkv; ++g) {
      std::vector<std::uint8_t> m(t + 1, 0);
      for (i64 p : cache[g]) m[p] = 1;
      for (i64 p = from; p <= t; ++p) m[p] = 1;
      masks[g].push_back(std::move(m));
    }
  }
  return masks;
}

// Every evaluation query's cache as the selection gives it (Selection::query_mask): [unit][query].
std::vector<std::vector<std::vector<std::uint8_t>>> masks_of(const Selection& s, const TestLayer& L) {
  REQUIRE(s.has_query_masks());
  std::vector<std::vector<std::vector<std::uint8_t>>> out(static_cast<std::size_t>(s.units));
  for (int u = 0; u < s.units; ++u)
    for (std::size_t q = 0; q < L.eval_rows.size(); ++q) {
      out[u].emplace_back();
      s.query_mask(u, static_cast<i64>(q), L.meta.q_pos[L.eval_rows[q]], out[u].back());
    }
  return out;
}

void check_masks(const Selection& s, const TestLayer& L, const std::vector<std::vector<std::vector<std::uint8_t>>>& ref) {
  REQUIRE(s.units == static_cast<int>(ref.size()));
  const auto got = masks_of(s, L);
  i64 wrong = 0;
  for (int u = 0; u < s.units; ++u)
    for (std::size_t q = 0; q < ref[u].size(); ++q) wrong += got[u][q] != ref[u][q];
  CHECK(wrong == 0);
}

}  // namespace

TEST_CASE("decode protocol: knorm's caches equal a float64 re-enactment (per-head tokens, both starts)") {
  const auto L = decode_layer(11);
  const auto rule = make_rule("knorm");
  for (const std::string budget : {"0.25", "64", "cr=0.8"})
    for (bool compressed : {false, true})
      for (i64 every : {8, 13}) {
        CAPTURE(budget);
        CAPTURE(compressed);
        CAPTURE(every);
        const Budget b = Budget::parse(budget);
        const auto sels = decode_select(*rule, L->input(), {b}, {every, compressed, 32});
        const auto ref = reenact(*L, every, compressed, b, knorm_cut(*L));
        check_masks(sels[0], *L, ref);
      }
}

TEST_CASE("decode protocol: snapkv's window attention sees only the head's cached keys") {
  const auto L = decode_layer(12);
  const auto rule = make_rule("snapkv(window=8,kernel=1)");
  for (const std::string budget : {"0.2", "48"})
    for (bool compressed : {false, true}) {
      CAPTURE(budget);
      CAPTURE(compressed);
      const Budget b = Budget::parse(budget);
      const auto sels = decode_select(*rule, L->input(), {b}, {8, compressed, 32});
      // The cut at n_0 (compressed start) is the one-shot selection itself.
      std::vector<Selection> first;
      if (compressed) first = rule->select(L->input(), {b});
      bool at_start = compressed;
      const auto ref = reenact(*L, 8, compressed, b, [&](int g, const std::vector<i64>& held, i64 keep) {
        if (at_start && static_cast<i64>(held.size()) == L->n_c) {
          std::vector<i64> out;
          for (i64 j = 0; j < L->n_c; ++j)
            if (first[0].unit_mask(g)[j]) out.push_back(j);
          if (g + 1 == L->data.num_kv_heads) at_start = false;
          return out;
        }
        return keep_best(held, snap_scores(*L, g, held, 8), keep, 8);
      });
      check_masks(sels[0], *L, ref);
    }
}

TEST_CASE("decode protocol: uneven heads (Ada-KV), step-wise rules: nothing evicted returns, budgets hold") {
  const auto L = decode_layer(13);
  const i64 ne = static_cast<i64>(L->eval_rows.size());
  std::vector<i64> eval;
  for (i64 r : L->eval_rows) eval.push_back(L->meta.q_pos[r]);
  for (const std::string spec : {"ada(snapkv(window=8))", "critical(ada(snapkv(window=8)))", "tova(variant=stepwise)",
                                 "h2o(variant=stepwise)", "quest"})
    for (bool compressed : {false, true}) {
      CAPTURE(spec);
      CAPTURE(compressed);
      const auto rule = make_rule(spec);
      const Budget b = Budget::parse("40");
      const Selection s = decode_select(*rule, L->input(), {b}, {8, compressed, 32})[0];
      const auto masks = masks_of(s, *L);
      i64 returned = 0, over = 0;
      for (int u = 0; u < s.units; ++u)
        for (i64 q = 1; q < ne; ++q) {
          const auto& prev = masks[u][q - 1];
          const auto& cur = masks[u][q];
          for (i64 j = 0; j < static_cast<i64>(prev.size()); ++j) returned += cur[j] && !prev[j];
        }
      // Right after each compression (n_0 + 8k) the layer holds at most units x 40 + 1 tokens (the
      // query's own); Ada-KV may shift tokens between heads.
      for (i64 q = 0; q < ne; ++q) {
        if ((eval[q] - L->n_c) % 8 != 0 || eval[q] == L->n_c) continue;
        i64 held = 0;
        for (int u = 0; u < s.units; ++u)
          held += std::count(masks[u][q].begin(), masks[u][q].end(), 1);
        over += held > s.units * 40 + s.units;
      }
      CHECK(returned == 0);
      if (spec != "quest") CHECK(over == 0);  // Quest keeps its pages' tokens, not a count
    }
}

TEST_CASE("decode protocol: every past the generation is the one-shot selection; full budgets keep all") {
  const auto L = decode_layer(14);
  const std::vector<Budget> budgets = {Budget::parse("0.25"), Budget::parse("64")};
  for (const std::string spec : {"snapkv", "ada(snapkv)", "tova(variant=stepwise)", "expected", "keydiff",
                                  "think(snapkv)", "quant(knorm,group=8,residual=16)"}) {
    CAPTURE(spec);
    const auto rule = make_rule(spec);
    const auto one = rule->select(L->input(), budgets);
    const auto dec = decode_select(*rule, L->input(), budgets, {1000, true, 32});
    for (std::size_t b = 0; b < budgets.size(); ++b) {
      CHECK(dec[b].kept == one[b].kept);
      CHECK(dec[b].per_query == one[b].per_query);
      CHECK(dec[b].held_caches.empty());
      CHECK(dec[b].key_channels == one[b].key_channels);
      REQUIRE((dec[b].quant == nullptr) == (one[b].quant == nullptr));
      if (one[b].quant) {
        CHECK(dec[b].quant->k == one[b].quant->k);
        CHECK(dec[b].quant->v == one[b].quant->v);
        CHECK(dec[b].quant->bytes == one[b].quant->bytes);
      }
    }
    // A budget above every length: nothing is ever cut, each query sees all of [0, t].
    const auto all = decode_select(*rule, L->input(), {Budget::parse("100000")}, {8, false, 32})[0];
    bool everything = true;
    for (const auto& unit : masks_of(all, *L))
      for (const auto& m : unit) everything = everything && std::all_of(m.begin(), m.end(), [](auto x) { return x == 1; });
    CHECK(everything);
  }
}

TEST_CASE("decode protocol: clear refusals") {
  const auto L = decode_layer(15);
  CHECK_THROWS_WITH_AS(decode_select(*make_rule("knorm"), L->input(), {Budget::parse("mem=0.25")}, {8, false, 32}),
                       doctest::Contains("mem=0.25"), Error);
  CHECK_THROWS_WITH_AS(decode_select(*make_rule("think(quant(knorm,group=8,residual=16))"), L->input(),
                                     {Budget::parse("64")}, {8, false, 32}),
                       doctest::Contains("quantized cache"), Error);
  CHECK_THROWS_WITH_AS(decode_select(*make_rule("knorm"), L->input(), {Budget::parse("64")}, {0, false, 32}),
                       doctest::Contains("--every"), Error);
}

TEST_CASE("decode protocol: append-only admission keeps every cached token, new ones where the cut keeps them") {
  const auto L = decode_layer(16);
  const auto rule = make_rule("knorm");
  for (const std::string budget : {"0.25", "64"})
    for (bool compressed : {false, true}) {
      CAPTURE(budget);
      CAPTURE(compressed);
      const Budget b = Budget::parse(budget);
      DecodeOptions opt{8, compressed, 32};
      opt.append_only = true;
      const auto sels = decode_select(*rule, L->input(), {b}, opt);
      const auto ref = reenact(*L, 8, compressed, b, knorm_cut(*L), true);
      check_masks(sels[0], *L, ref);
      // nothing held at n_0 ever leaves, and some generated token was refused
      const Selection& s = sels[0];
      const auto masks = masks_of(s, *L);
      i64 left = 0, refused = 0;
      for (int u = 0; u < s.units; ++u) {
        const auto& first = masks[u].front();
        const auto& last = masks[u].back();
        for (i64 j = 0; j < L->n_c; ++j) left += first[j] && !last[j];
        for (i64 j = L->n_c; j + 8 < static_cast<i64>(last.size()); ++j) refused += !last[j];
      }
      CHECK(left == 0);
      CHECK(refused > 0);
    }
}

TEST_CASE("decode protocol: cross-layer rules keep the allocation planned at n_0") {
  const SynthOptions o = decode_model(21);
  std::vector<std::unique_ptr<TestLayer>> layers;
  for (int l = 0; l < o.num_layers; ++l) layers.push_back(synthetic_test_layer(o, l));
  const std::vector<Budget> budgets = {Budget::parse("0.25")};
  for (const std::string spec : {"duo(sink=4,recent=16,ratio=0.5)", "kvcompose", "global(snapkv(window=8))"}) {
    CAPTURE(spec);
    const auto rule = make_rule(spec);
    auto planner = rule->layer_planner();
    REQUIRE(planner);
    for (const auto& L : layers) planner->observe(L->input());
    const auto plan = planner->plan(budgets);
    for (const auto& L : layers) {
      std::vector<std::vector<i64>> counts = {plan[0].at(L->data.layer)};
      RuleInput in = L->input();
      in.planned = &counts;
      const i64 n0 = L->n_c;
      const Selection s = decode_select(*rule, in, budgets, {8, false, 32})[0];
      const auto masks = masks_of(s, *L);
      std::vector<i64> eval;
      for (i64 r : L->eval_rows) eval.push_back(L->meta.q_pos[r]);
      for (int u = 0; u < s.units; ++u)
        for (std::size_t q = 1; q < eval.size(); ++q) {
          const auto& prev = masks[u][q - 1];
          for (std::size_t j = 0; j < prev.size(); ++j) CHECK_FALSE((masks[u][q][j] && !prev[j]));  // never returns
        }
      for (std::size_t q = 0; q < eval.size(); ++q) {
        const i64 t = eval[q], L_cut = n0 + (t - n0) / 8 * 8;  // the last cut at or before t
        if (L_cut == n0) continue;                              // full until the first cut
        i64 held = 0;
        for (int u = 0; u < s.units; ++u) {
          const i64 c = std::count(masks[u][q].begin(), masks[u][q].end(), 1);
          held += c;
          if (spec.rfind("duo", 0) == 0) {  // a full head holds everything, a streaming one sink + recent + since
            const bool full = counts[0][u] >= n0;
            CHECK(c == (full ? t + 1 : 4 + 16 + (t - L_cut + 1)));
          }
        }
        if (spec.rfind("duo", 0) != 0) {  // the planned shares of 25% of the L tokens seen, within rounding
          double want = 0;
          for (int u = 0; u < s.units; ++u)
            want += static_cast<double>(counts[0][u]) * static_cast<double>(budgets[0].tokens_for(L_cut)) /
                    static_cast<double>(budgets[0].tokens_for(n0));
          CHECK(std::abs(static_cast<double>(held - s.units * (t - L_cut + 1)) - want) <= s.units + 1e-9);
        }
      }
    }
  }
}

namespace {

// ThinK's channel mask of KV head g (rules doc 2.12) in float64: group mean of the window
// queries' mean q_c^2 (window: positions [w0, w1)) times the kept keys' mean k_c^2 (the keys as
// the cache holds them: `pruned[p][c]` zero where an earlier cut pruned), the floor(d ratio)
// lowest zeroed (ties: lower channel first).
std::vector<std::uint8_t> think_mask(const TestLayer& L, int g, i64 w0, i64 w1, const std::vector<i64>& kept,
                                     double ratio, const std::vector<std::vector<std::uint8_t>>& pruned) {
  const LayerData& D = L.data;
  const int d = D.head_dim, G = D.num_heads / D.num_kv_heads;
  std::vector<double> q2(d, 0.0), k2(d, 0.0), score(d);
  for (int h = g * G; h < (g + 1) * G; ++h)
    for (i64 t = w0; t < w1; ++t) {
      const i64 row = std::lower_bound(L.meta.q_pos.begin(), L.meta.q_pos.end(), t) - L.meta.q_pos.begin();
      for (int c = 0; c < d; ++c) q2[c] += std::pow(static_cast<double>(D.q_row(h, row)[c]), 2) / ((w1 - w0) * G);
    }
  for (i64 p : kept)
    for (int c = 0; c < d; ++c)
      if (p >= static_cast<i64>(pruned.size()) || pruned[p][c])
        k2[c] += std::pow(static_cast<double>(D.k_row(g, p)[c]), 2) / kept.size();
  for (int c = 0; c < d; ++c) score[c] = q2[c] * k2[c];
  std::vector<int> order(d);
  for (int c = 0; c < d; ++c) order[c] = c;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] < score[b]; });
  std::vector<std::uint8_t> keep(d, 1);
  for (int i = 0; i < static_cast<int>(std::floor(d * ratio + 1e-9)); ++i) keep[order[i]] = 0;
  return keep;
}

std::vector<i64> held_list(const Selection::HeldCache& c, int u) {
  std::vector<i64> out;
  for (i64 p = 0; p < c.from; ++p)
    if (c.held[static_cast<std::size_t>(u) * c.from + p]) out.push_back(p);
  return out;
}

// Each start (full, compressed) and budget (0.25, 64 tokens): the rule's decode selection cut
// every 8 positions, with at least 5 held caches, handed to check(selection, start).
template <class Check>
void each_decode_case(const Rule& rule, const TestLayer& L, Check check) {
  for (bool start : {false, true})
    for (const std::string budget : {"0.25", "64"}) {
      CAPTURE(start);
      CAPTURE(budget);
      const Selection s = decode_select(rule, L.input(), {Budget::parse(budget)}, {8, start, 32})[0];
      REQUIRE(s.held_caches.size() >= 5);
      check(s, start);
    }
}

}  // namespace

TEST_CASE("decode protocol: ThinK prunes every cached key at each cut, on top of earlier cuts; new tokens stay whole") {
  const auto L = decode_layer(21);
  const int d = L->data.head_dim;
  const i64 w = 8;
  // Over a per-head top-k and over a step-wise base (TOVA: per-query masks decide the support,
  // the held caches carry the rows).
  for (const std::string spec : {"think(knorm,ratio=0.25,window=8)", "think(tova(variant=stepwise),ratio=0.25,window=8)"}) {
  CAPTURE(spec);
  const auto rule = make_rule(spec);
  each_decode_case(*rule, *L, [&](const Selection& s, bool start) {
      CHECK(s.held_rows());
      CHECK(s.kept_bytes.empty());  // ThinK stores float16 keys and values
      // Per unit, the cumulative mask of every position: AND of the masks of the cuts that held it.
      std::vector<std::vector<std::vector<std::uint8_t>>> acc(s.units);
      i64 wrong = 0, pruned = 0, carried = 0;
      for (std::size_t i = 0; i < s.held_caches.size(); ++i) {
        const auto& c = s.held_caches[i];
        if (i == 0 && !start) {  // the full cache at n_0: nothing pruned yet
          CHECK(c.rows == nullptr);
          continue;
        }
        REQUIRE(c.rows != nullptr);
        if (i > 0 && c.rows == s.held_caches[i - 1].rows) {  // no cut here (TOVA's own steps kept it
          ++carried;                                          // within the budget): rows carried
          continue;
        }
        for (int u = 0; u < s.units; ++u) {
          const auto kept = held_list(c, u);
          // The cut at c.from: the window is the last w positions before it (the prompt's at n_0).
          const auto mask = think_mask(*L, u, c.from - w, c.from, kept, 0.25, acc[u]);
          acc[u].resize(c.from, std::vector<std::uint8_t>(d, 1));
          for (i64 p : kept) {
            for (int x = 0; x < d; ++x) acc[u][p][x] &= mask[x];
            for (int x = 0; x < d; ++x) {
              const float want = acc[u][p][x] ? L->data.k_row(u, p)[x] : 0.f;
              wrong += c.rows->k_row(u, p)[x] != want;
              pruned += !acc[u][p][x];
            }
          }
        }
        CHECK(c.rows->n_c == c.from);  // positions from the cut on: the trace's whole keys
        CHECK_FALSE(c.rows->has_values());
      }
      CHECK(wrong == 0);
      CHECK(pruned > 0);
      CHECK(carried < static_cast<i64>(s.held_caches.size()) - 2);  // most intervals opened with a cut
  });
  }
}

TEST_CASE("decode protocol: quant keeps a token's codes from the first cut that quantized it; bytes count them") {
  const auto L = decode_layer(22);
  const int d = L->data.head_dim;
  QuantSpec q;
  q.group = 8;
  q.residual = 16;
  const auto rule = make_rule("quant(knorm,group=8,residual=16)");
  each_decode_case(*rule, *L, [&](const Selection& s, bool start) {
      i64 wrong = 0, carried = 0, fresh = 0;
      const QuantizedKV* prev = nullptr;
      for (std::size_t i = 0; i < s.held_caches.size(); ++i) {
        const auto& c = s.held_caches[i];
        if (i == 0 && !start) continue;
        REQUIRE(c.rows != nullptr);
        for (int u = 0; u < s.units; ++u) {
          // This cut's cache: the unit's kept rows as the cache held them (codes from earlier
          // cuts, else the trace's) in position order, quantized afresh.
          const auto kept = held_list(c, u);
          for (int side = 0; side < 2; ++side) {
            std::vector<float> rows;
            for (i64 p : kept) {
              const bool held_before = prev && p < prev->n_c;
              const float* r = side == 0 ? (held_before ? prev->k_row(u, p) : L->data.k_row(u, p))
                                         : (held_before ? prev->v_row(u, p) : L->data.v_row(u, p));
              rows.insert(rows.end(), r, r + d);
            }
            const auto qr = quantize_rows(rows.data(), static_cast<i64>(kept.size()), d, 2,
                                          side == 0 ? q.kaxis : q.vaxis, q, "test");
            for (std::size_t m = 0; m < kept.size(); ++m) {
              const i64 p = kept[m];
              const bool had = prev && p < prev->n_c && (side == 0 ? prev->k_is_coded(u, p) : prev->v_is_coded(u, p));
              const float* got = side == 0 ? c.rows->k_row(u, p) : c.rows->v_row(u, p);
              const float* want = had ? (side == 0 ? prev->k_row(u, p) : prev->v_row(u, p)) : qr.xhat.data() + m * d;
              for (int x = 0; x < d; ++x) wrong += got[x] != want[x];
              const bool coded = side == 0 ? c.rows->k_is_coded(u, p) : c.rows->v_is_coded(u, p);
              wrong += coded != (had || static_cast<i64>(m) < qr.quantized_rows);
              carried += had;
              fresh += !had && static_cast<i64>(m) < qr.quantized_rows;
            }
          }
        }
        prev = c.rows.get();
      }
      CHECK(wrong == 0);
      CHECK(carried > 0);
      CHECK(fresh > 0);
      // Bytes: the last query's tokens of [0, n_0), each at its side's coded rate or 2 d.
      REQUIRE(s.kept_bytes.size() == static_cast<std::size_t>(s.units));
      const double coded_row = d * 2 / 8.0 + d / 8.0 * 4;  // 2-bit codes + a float16 scale and zero per 8
      for (int u = 0; u < s.units; ++u) {
        double want = 0;
        for (i64 p = 0; p < s.n_c; ++p)
          if (s.unit_mask(u)[p])
            for (bool coded : {prev->k_is_coded(u, p), prev->v_is_coded(u, p)}) want += coded ? coded_row : 2.0 * d;
        CHECK(s.kept_bytes[u] == doctest::Approx(want).epsilon(1e-12));
        CHECK(s.kept_bytes[u] < 4.0 * d * s.kept_count(u));
      }
  });
}

TEST_CASE("decode protocol: Quest's pages evict nothing; each cut's budget counts every token seen") {
  // quest(page=4, dense_layers=0, min_pages=1), 0.25, cut every 8: a query after the cut at L
  // attends to int(0.25 L) / 4 pages of the whole cache (nothing was evicted), so tokens the
  // last query before a cut skipped come back after it.
  const auto L = decode_layer(23);
  const auto rule = make_rule("quest(page=4,dense_layers=0,min_pages=1)");
  const Selection s = decode_select(*rule, L->input(), {Budget::parse("0.25")}, {8, false, 32})[0];
  const auto masks = masks_of(s, *L);
  const i64 n0 = L->n_c;
  i64 returned = 0, checked = 0;
  for (std::size_t q = 1; q < L->eval_rows.size(); ++q) {
    const i64 t = L->meta.q_pos[L->eval_rows[q]];
    if (t < n0 + 8) continue;  // full start: dense until the first cut
    const i64 cut = n0 + (t - n0) / 8 * 8;
    const i64 pages = std::min(Budget::parse("0.25").tokens_for(cut) / 4, t / 4 + 1);
    for (int u = 0; u < s.units; ++u) {
      const auto& m = masks[u][q];
      // Whole pages, the query's own (partial) page among them: pages x 4 tokens, less the part
      // of the last page past t.
      const i64 held = std::count(m.begin(), m.end(), 1);
      CHECK(held <= pages * 4);
      CHECK(held > (pages - 1) * 4);
      ++checked;
      if (t == cut)  // the first query after a cut sees tokens the last one before it skipped
        for (i64 j = 0; j < cut - 1; ++j) returned += m[j] && !masks[u][q - 1][j];
    }
  }
  CHECK(checked > 100);
  CHECK(returned > 0);
}
