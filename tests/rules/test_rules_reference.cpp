// Every core rule against its brute-force float64 reference (rules_reference.h) on synthetic
// layers with G = 1, 2, 4 and on the real stories260K NIAH trace: identical kept sets, scores
// equal to 1e-5 relative.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <filesystem>
#include <numeric>

#include "core/error.h"
#include "rules/ada.h"
#include "rules/factory.h"
#include "rules/pyramid.h"
#include "rules/random_scores.h"
#include "rules/scored_rule.h"
#include "rules_reference.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

const std::vector<std::string> kBudgetText = {"0.1", "0.3", "100", "cr=0.75"};

// A budget's share of count items of an n-token span: max(1, int(count (1 - cr))) exactly as
// kvpress for a ratio; floor(count f) (up to rounding noise) otherwise.
i64 share(const Budget& b, i64 count, i64 n) {
  if (b.kind == Budget::Kind::compression_ratio)
    return std::max<i64>(1, static_cast<i64>(static_cast<double>(count) * (1.0 - b.value)));
  const double f = b.kind == Budget::Kind::fraction ? b.value : b.value / static_cast<double>(n);
  return std::max<i64>(1, static_cast<i64>(std::floor(static_cast<double>(count) * f + 1e-9)));
}

// The unrounded budget: f n_c, n_c (1 - cr) or the token count (kvpress's float arithmetic).
double exact_budget(const Budget& b, i64 n) {
  if (b.kind == Budget::Kind::fraction) return b.value * static_cast<double>(n);
  if (b.kind == Budget::Kind::compression_ratio) return static_cast<double>(n) * (1.0 - b.value);
  return b.value;
}

std::vector<Budget> budgets() {
  std::vector<Budget> b;
  for (const auto& t : kBudgetText) b.push_back(Budget::parse(t));
  return b;
}

std::vector<i64> uniform(std::size_t units, i64 B) { return std::vector<i64>(units, B); }

// Scores of the rule (first `len` positions of each unit) vs the reference, relative error.
void check_scores(const Rule& rule, const TestLayer& L, const Mat& ref) {
  auto* sr = dynamic_cast<const ScoredRule*>(&rule);
  REQUIRE(sr != nullptr);
  const UnitScores s = sr->scores(L.input());
  REQUIRE(s.units == static_cast<int>(ref.size()));
  // 1e-5 relative for every score within 1e-6 of its unit's largest; the far tail (attention
  // ~1e-16 on the real trace) inherits the fp32 logit rounding, |logit| * 2^-24 relative after
  // exp, so it gets 1e-4.
  double worst = 0, worst_tail = 0;
  for (int u = 0; u < s.units; ++u) {
    double top = 0;
    for (double b : ref[u]) top = std::max(top, std::abs(b));
    for (std::size_t j = 0; j < ref[u].size(); ++j) {
      const double a = s.unit(u)[j], b = ref[u][j];
      const double rel = std::abs(a - b) / std::max(std::abs(b), 1e-300);
      double& w = std::abs(b) >= 1e-6 * top ? worst : worst_tail;
      w = std::max(w, rel);
    }
  }
  CHECK_MESSAGE(worst <= 1e-5, rule.spec() << " worst relative score error " << worst);
  CHECK_MESSAGE(worst_tail <= 1e-4, rule.spec() << " worst relative score error in the far tail " << worst_tail);
}

void check_masks(const Selection& sel, const Masks& ref, const std::string& what) {
  REQUIRE(sel.units == static_cast<int>(ref.size()));
  i64 bad = 0;
  for (int u = 0; u < sel.units; ++u)
    for (i64 j = 0; j < sel.n_c; ++j) bad += sel.unit_mask(u)[j] != ref[u][j];
  CHECK_MESSAGE(bad == 0, what << ": " << bad << " kept-set differences");
}

struct LayerCase {
  std::string name;
  std::unique_ptr<TestLayer> layer;
};

std::vector<LayerCase> layers() {
  std::vector<LayerCase> out;
  out.push_back({"synthetic G=1", synthetic_test_layer(4, 4, 1, 11)});
  out.push_back({"synthetic G=2", synthetic_test_layer(4, 2, 2, 12)});
  out.push_back({"synthetic G=4", synthetic_test_layer(8, 2, 3, 13)});
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (std::filesystem::exists(trace)) {
    out.push_back({"niah_stories260k layer 0", trace_test_layer(trace, 0)});
    out.push_back({"niah_stories260k layer 4", trace_test_layer(trace, 4)});
  } else {
    MESSAGE("traces/niah_stories260k.h5 not found: trace cases skipped");
  }
  return out;
}

struct SnapCase {
  std::string spec;
  RefSnap ref;
};

const std::vector<SnapCase> kSnap = {
    {"snapkv(window=16,kernel=5,pool=avg,agg=mean,gqa=mean)", {16, 5, false, true, true, "mean"}},
    {"snapkv(window=16,kernel=7,pool=max,gqa=max,order=reduce_then_pool)", {16, 7, true, true, false, "max"}},
    {"snapkv(window=16,kernel=7,pool=max,gqa=max)", {16, 7, true, true, true, "max"}},
    {"snapkv(window=8,kernel=3,pool=max,agg=sum,gqa=sum)", {8, 3, true, false, true, "sum"}},
    {"snapkv(window=16,kernel=7,pool=max,gqa=query)", {16, 7, true, true, true, "query"}},
    {"snapkv(window=32,kernel=1,pool=avg,order=reduce_then_pool)", {32, 1, false, true, false, "mean"}},
};

}  // namespace

TEST_CASE("snapkv, pyramid, ada, critical vs float64 references") {
  for (auto& lc : layers()) {
    CAPTURE(lc.name);
    const TestLayer& L = *lc.layer;
    const RuleInput in = L.input();
    const auto bs = budgets();
    for (const auto& sc : kSnap) {
      CAPTURE(sc.spec);
      auto rule = make_rule(sc.spec);
      const Mat ref = ref_snapkv(L, sc.ref);
      const i64 w = sc.ref.window;
      check_scores(*rule, L, ref);
      const auto sel = rule->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b) {
        const i64 B = bs[b].tokens_for(L.n_c);
        check_masks(sel[b], ref_keep_prefix(ref, L.n_c, w, uniform(ref.size(), B)), sc.spec + " @ " + kBudgetText[b]);
        for (int u = 0; u < sel[b].units; ++u) CHECK(sel[b].kept_count(u) == B);
      }
    }

    // PyramidKV: layer budgets from the spec formulas, then SnapKV kept sets.
    const int Lnum = L.meta.num_layers, l = L.data.layer;
    for (const char* variant : {"int", "float"}) {
      const std::string spec = std::string("pyramid(snapkv(window=16,kernel=5,pool=avg),beta=4,variant=") + variant + ")";
      CAPTURE(spec);
      auto rule = make_rule(spec);
      const Mat ref = ref_snapkv(L, kSnap[0].ref);
      const auto sel = rule->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b) {
        const i64 B = bs[b].tokens_for(L.n_c), w = 16, n = L.n_c;
        i64 Bl;
        if (std::string(variant) == "int") {
          i64 mn = static_cast<i64>((B - w) / 4.0), mx = 2 * (B - w) - mn;
          if (mx >= n - w) mx = n - w, mn = 2 * (B - w) - mx;
          Bl = mx - l * ((mx - mn) / (Lnum - 1)) + w;
        } else {  // kvpress PyramidKVPress: from the unrounded kept count, Python round()
          const double E = exact_budget(bs[b], n);
          double mn = E / 4.0, mx = 2.0 * E - mn;
          if (mx >= n - w) mx = n - w, mn = 2.0 * E - mx;
          Bl = (n >= mx && mx >= mn && mn >= w) ? static_cast<i64>(std::nearbyint(mx - l * (mx - mn) / (Lnum - 1)))
                                                : std::max<i64>(1, static_cast<i64>(std::nearbyint(E)));
        }
        check_masks(sel[b], ref_keep_prefix(ref, n, w, uniform(ref.size(), Bl)), spec + " @ " + kBudgetText[b]);
      }
    }

    // Ada-KV variants (alone and on top of pyramid) and CriticalKV / CriticalAdaKV.
    struct AdaCase {
      std::string spec;
      double alpha;
      bool a, normalize, in_floor;
    };
    const std::vector<AdaCase> ada = {
        {"ada(snapkv(window=16,kernel=5,pool=avg))", 0.2, false, false, false},
        {"ada(snapkv(window=16,kernel=5,pool=avg),alpha=0.5,window_in_floor=true)", 0.5, false, false, true},
        {"ada(snapkv(window=16,kernel=5,pool=avg),alpha=0.2,variant=A)", 0.2, true, false, false},
        {"ada(snapkv(window=16,kernel=5,pool=avg),alpha=0.3,variant=A,normalize=true)", 0.3, true, true, false},
        {"ada(snapkv(window=16,kernel=5,pool=avg),alpha=0)", 0.0, false, false, false},
    };
    const Mat snap = ref_snapkv(L, kSnap[0].ref);
    for (const auto& ac : ada) {
      CAPTURE(ac.spec);
      const auto sel = make_rule(ac.spec)->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b) {
        const i64 B = bs[b].tokens_for(L.n_c);
        const auto counts = ref_ada_counts(snap, 16, B, ac.alpha, ac.a, ac.normalize, ac.in_floor);
        check_masks(sel[b], ref_keep_prefix(snap, L.n_c, 16, counts), ac.spec + " @ " + kBudgetText[b]);
        if (!ac.a) {  // Variant B keeps exactly units * B tokens in the layer
          i64 total = 0;
          for (int u = 0; u < sel[b].units; ++u) total += sel[b].kept_count(u);
          CHECK(total == B * sel[b].units);
        }
      }
    }

    for (const char* norm : {"l1", "l2", "upper"})
      for (double alpha : {0.5, 1.0, 0.0}) {
        const std::string spec = "critical(snapkv(window=16,kernel=5,pool=avg),alpha=" + std::to_string(alpha) +
                                 ",eps=0.0001,norm=" + norm + ")";
        CAPTURE(spec);
        const Mat nu = ref_value_norms(L, norm, false);
        const auto sel = make_rule(spec)->select(in, bs);
        for (std::size_t b = 0; b < bs.size(); ++b) {
          const i64 B = bs[b].tokens_for(L.n_c);
          // kvpress CriticalKVPress: stage 1 = int((1 - cr) n_c alpha), from the unrounded budget.
          const i64 s1 = static_cast<i64>(std::floor(exact_budget(bs[b], L.n_c) * alpha));
          check_masks(sel[b], ref_critical(snap, nu, L.n_c, 16, uniform(snap.size(), B), uniform(snap.size(), s1), 1e-4),
                      spec + " @ " + kBudgetText[b]);
        }
      }
    for (bool in_floor : {false, true})
      for (bool floor_in_stage1 : {true, false}) {
        const std::string spec = std::string("critical(ada(snapkv(window=16,kernel=5,pool=avg),alpha=0.2,window_in_floor=") +
                                 (in_floor ? "true" : "false") + "),floor_in_stage1=" +
                                 (floor_in_stage1 ? "true" : "false") + ")";
        CAPTURE(spec);
        const Mat nu = ref_value_norms(L, "l1", false);
        const auto sel = make_rule(spec)->select(in, bs);
        for (std::size_t b = 0; b < bs.size(); ++b) {
          const i64 B = bs[b].tokens_for(L.n_c), w = 16;
          const auto counts = ref_ada_counts(snap, w, B, 0.2, false, false, in_floor);
          // kvpress CriticalAdaKVPress: stage 1 = int(B_h alpha), and the safeguard tokens stay
          // forced, so effectively the top max(n_safe, int(B_h alpha)) (window inside n_safe).
          const i64 n_safe = ref_n_safe(B, 0.2);
          const i64 forced = in_floor ? std::max(n_safe, w) : std::min({n_safe, B - w, L.n_c - w}) + w;
          std::vector<i64> s1(counts.size());
          for (std::size_t u = 0; u < counts.size(); ++u) {
            s1[u] = static_cast<i64>(std::floor(static_cast<double>(counts[u]) * 0.5));
            if (floor_in_stage1) s1[u] = std::max(s1[u], forced);
          }
          check_masks(sel[b], ref_critical(snap, nu, L.n_c, 16, counts, s1, 1e-4), spec + " @ " + kBudgetText[b]);
        }
      }
    {  // query-head mode CriticalKV: per query head scores and norms
      const std::string spec = "critical(snapkv(window=16,kernel=7,pool=max,gqa=query),alpha=0.25)";
      const Mat s = ref_snapkv(L, kSnap[4].ref);
      const Mat nu = ref_value_norms(L, "l1", true);
      const auto sel = make_rule(spec)->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b) {
        const i64 B = bs[b].tokens_for(L.n_c);
        const i64 s1 = static_cast<i64>(std::floor(exact_budget(bs[b], L.n_c) * 0.25));
        check_masks(sel[b], ref_critical(s, nu, L.n_c, 16, uniform(s.size(), B), uniform(s.size(), s1), 1e-4), spec);
      }
    }
  }
}

TEST_CASE("oracle, knorm, streaming, random, chunk, chunkkv vs references") {
  for (auto& lc : layers()) {
    CAPTURE(lc.name);
    const TestLayer& L = *lc.layer;
    const RuleInput in = L.input();
    const auto bs = budgets();
    const i64 n = L.n_c;
    auto top_masks = [&](const Mat& s, i64 B) {
      Masks m(s.size(), std::vector<std::uint8_t>(n, 0));
      for (std::size_t u = 0; u < s.size(); ++u)
        for (i64 j : ref_top(s[u], B)) m[u][j] = 1;
      return m;
    };
    for (const char* g : {"mean", "max", "query"}) {
      auto rule = make_rule(std::string("oracle(gqa=") + g + ")");
      const Mat ref = ref_oracle(L, g);
      check_scores(*rule, L, ref);
      const auto sel = rule->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b)
        check_masks(sel[b], top_masks(ref, bs[b].tokens_for(n)), rule->spec() + " @ " + kBudgetText[b]);
    }
    {
      auto rule = make_rule("knorm");
      const Mat ref = ref_knorm(L);
      check_scores(*rule, L, ref);
      const auto sel = rule->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b) check_masks(sel[b], top_masks(ref, bs[b].tokens_for(n)), "knorm");
    }
    {
      const auto sel = make_rule("streaming(sink=4)")->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b) {
        const i64 B = bs[b].tokens_for(n);
        Masks m(L.data.num_kv_heads, std::vector<std::uint8_t>(n, 0));
        for (auto& r : m)
          for (i64 j = 0; j < n; ++j) r[j] = j < 4 || j >= n - (B - 4);
        check_masks(sel[b], m, "streaming");
      }
    }
    {
      const auto a = make_rule("random(seed=5)")->select(in, bs);
      const auto c = make_rule("random(seed=6)")->select(in, bs);
      for (std::size_t b = 0; b < bs.size(); ++b) {
        const i64 B = bs[b].tokens_for(n);
        Mat s(L.data.num_kv_heads, std::vector<double>(n));
        for (int u = 0; u < L.data.num_kv_heads; ++u)
          for (i64 j = 0; j < n; ++j) s[u][j] = random_score(5, L.data.layer, u, j);
        check_masks(a[b], top_masks(s, B), "random");
        CHECK(a[b].kept != c[b].kept);
        for (int u = 0; u < a[b].units; ++u) CHECK(a[b].kept_count(u) == B);
      }
    }
    {  // chunk(knorm, len=100): per chunk top max(1, floor(len_c * f))
      const auto sel = make_rule("chunk(knorm,len=100)")->select(in, bs);
      const Mat ref = ref_knorm(L);
      for (std::size_t b = 0; b < bs.size(); ++b) {
        Masks m(ref.size(), std::vector<std::uint8_t>(n, 0));
        for (i64 c0 = 0; c0 < n; c0 += 100) {
          const i64 c1 = std::min(n, c0 + 100);
          const i64 k = share(bs[b], c1 - c0, n);
          for (std::size_t u = 0; u < ref.size(); ++u) {
            std::vector<double> part(ref[u].begin() + c0, ref[u].begin() + c1);
            for (i64 j : ref_top(part, k)) m[u][c0 + j] = 1;
          }
        }
        check_masks(sel[b], m, "chunk(knorm) @ " + kBudgetText[b]);
      }
    }
    {  // chunkkv(snapkv, len=20): window chunks forced, then best chunks by mean summed score
      const auto sel = make_rule("chunkkv(snapkv(window=16,kernel=5,pool=avg),len=20)")->select(in, bs);
      const Mat s = ref_snapkv(L, kSnap[0].ref);
      const i64 m = n - 16, nch = (n + 19) / 20;
      std::vector<double> cs(nch, 0.0);
      std::vector<std::uint8_t> forced(nch, 0);
      for (i64 c = 0; c < nch; ++c) {
        i64 cnt = 0;
        for (i64 j = c * 20; j < std::min(n, c * 20 + 20); ++j) {
          if (j >= m) {
            forced[c] = 1;
            continue;
          }
          for (const auto& r : s) cs[c] += r[j];
          ++cnt;
        }
        if (cnt) cs[c] /= cnt;
      }
      const i64 nf = std::accumulate(forced.begin(), forced.end(), i64{0});
      for (std::size_t b = 0; b < bs.size(); ++b) {
        const i64 want = share(bs[b], nch, n);
        std::vector<std::uint8_t> keep = forced;
        for (i64 c : ref_top(cs, std::max<i64>(0, want - nf), &forced)) keep[c] = 1;
        Masks mk(s.size(), std::vector<std::uint8_t>(n, 0));
        for (auto& r : mk)
          for (i64 j = 0; j < n; ++j) r[j] = keep[j / 20];
        check_masks(sel[b], mk, "chunkkv @ " + kBudgetText[b]);
      }
    }
  }
}

TEST_CASE("chunk(snapkv) on the trace: every chunk scored with its own last queries") {
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (!std::filesystem::exists(trace)) return;
  auto L = trace_test_layer(trace, 1);
  const auto sel = make_rule("chunk(snapkv(window=8,kernel=5,pool=avg),len=669)")->select(L->input(), budgets());
  // Each chunk keeps its own window (the last 8 tokens of every chunk).
  for (i64 c1 : {i64{669}, i64{1338}, L->n_c})
    for (i64 j = c1 - 8; j < c1; ++j) CHECK(sel[1].unit_mask(0)[j] == 1);
}

TEST_CASE("rule invariants") {
  auto L = synthetic_test_layer(8, 2, 2, 21);
  const RuleInput in = L->input();
  const auto bs = budgets();
  auto same = [&](const std::string& a, const std::string& b) {
    const auto x = make_rule(a)->select(in, bs), y = make_rule(b)->select(in, bs);
    for (std::size_t i = 0; i < bs.size(); ++i) CHECK_MESSAGE(x[i].kept == y[i].kept, a << " vs " << b);
  };
  same("critical(snapkv(window=16),alpha=1)", "snapkv(window=16)");
  same("critical(ada(snapkv(window=16)),alpha=1)", "ada(snapkv(window=16))");
  same("ada(snapkv(window=16),alpha=1)", "snapkv(window=16)");        // full safeguard = uniform
  same("ada(snapkv(window=16),alpha=1,variant=A)", "snapkv(window=16)");
  same("pyramid(snapkv(window=16),variant=float)", "pyramid(snapkv(window=16))");  // the default
  same("ada(snapkv(window=16),skip=3)", "snapkv(window=16)");  // layer 2 < skip: uniform
  // Nested top-k: kept sets grow with the budget.
  for (const char* spec : {"snapkv", "oracle", "knorm", "ada(snapkv)"}) {
    const auto s = make_rule(spec)->select(in, bs);
    for (int u = 0; u < s[0].units; ++u)
      for (i64 j = 0; j < in.n_c; ++j) CHECK(s[0].unit_mask(u)[j] <= s[1].unit_mask(u)[j]);
  }
  // The oracle retains at least as much evaluation attention as any other static rule of the
  // same per-unit budget (in mean over evaluation queries, kv mode).
  const auto oracle = make_rule("oracle")->select(in, bs);
  const Mat mass = ref_oracle(*L, "mean");
  auto retained = [&](const Selection& s) {
    double r = 0;
    for (int u = 0; u < s.units; ++u)
      for (i64 j = 0; j < s.n_c; ++j) r += s.unit_mask(u)[j] * mass[u][j];
    return r;
  };
  for (const char* spec : {"snapkv", "knorm", "streaming", "random", "critical(snapkv)"}) {
    const auto s = make_rule(spec)->select(in, bs);
    for (std::size_t b = 0; b < bs.size(); ++b) CHECK(retained(oracle[b]) >= retained(s[b]) - 1e-9);
  }
}

TEST_CASE("ada: flattened top-B never retains less than uniform; variant A sums before the safeguard") {
  std::uint64_t state = 42;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((state >> 40) & 0xFFFFFF) / 16777216.0f;
  };
  for (int trial = 0; trial < 200; ++trial) {
    const int H = 1 + trial % 8;
    const i64 m = 5 + trial % 37, b = 1 + trial % m;
    std::vector<float> s(H * m);
    for (auto& x : s) x = std::pow(next(), 1 + trial % 5);  // varied concentration
    const auto n = ada_flattened_counts(s.data(), H, m, H * b);
    CHECK(std::accumulate(n.begin(), n.end(), i64{0}) == H * b);
    CHECK(ada_variant_a(s.data(), H, m, b, 0.0, false) == n);
    const auto vb = ada_variant_b(s.data(), H, m, b, 0);
    CHECK(vb == n);
    double flat = 0, unif = 0;
    for (int h = 0; h < H; ++h) {
      std::vector<float> row(s.begin() + h * m, s.begin() + (h + 1) * m);
      std::sort(row.begin(), row.end(), std::greater<>());
      for (i64 j = 0; j < n[h]; ++j) flat += row[j];
      for (i64 j = 0; j < b; ++j) unif += row[j];
    }
    CHECK(flat >= unif - 1e-6);
    const auto a = ada_variant_a(s.data(), H, m, b, 0.3, false);
    CHECK(std::abs(std::accumulate(a.begin(), a.end(), i64{0}) - H * b) <= (H + 1) / 2 + H);
  }
}

TEST_CASE("budget and nesting errors are clear") {
  auto L = synthetic_test_layer(4, 2, 0, 3);
  auto err = [&](const std::string& spec, const std::string& budget) -> std::string {
    try {
      make_rule(spec)->select(L->input(), {Budget::parse(budget)});
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  CHECK(err("snapkv(window=32)", "16") ==
        "snapkv(window=32,kernel=7,pool=max,agg=mean,gqa=mean,order=pool_then_reduce): budget 16: 16 kept tokens per KV "
        "head (layer 0) are fewer than the 32 protected tokens (observation window / sinks); use a larger budget or a "
        "smaller window");
  CHECK(err("snapkv(window=32)", "100000").find("budget '100000': 100000 tokens exceed the 320 compressible") == 0);
  CHECK(err("snapkv(window=100)", "0.5").find("needs the query at position 220") != std::string::npos);
  {  // CriticalKV needs W_o: the error names the trace dataset
    auto M = synthetic_test_layer(4, 2, 0, 3);
    M->data.o_proj.clear();
    M->meta.path = "toy.h5";
    M->cache = std::make_unique<LayerCache>(M->meta, M->data, M->n_c, M->eval_rows);
    std::string e;
    try {
      make_rule("critical")->select(M->input(), {Budget::parse("0.5")});
    } catch (const Error& x) {
      e = x.what();
    }
    CHECK(e.rfind("toy.h5: /layers/0/o_proj: missing; critical(", 0) == 0);
  }
  auto build_err = [](const std::string& spec) -> std::string {
    try {
      make_rule(spec);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  CHECK(build_err("snapkv(ada)") == "rule spec 'snapkv(ada)': snapkv: takes no base rule, but got 'ada'");
  CHECK(build_err("ada(random)").find("ada: base rule 'random(seed=0)' does not score attention") != std::string::npos);
  CHECK(build_err("pyramid(ada(snapkv))").find("pyramid: base rule 'ada(") != std::string::npos);
  CHECK(build_err("ada(critical(snapkv))").find("cannot be wrapped by ada") != std::string::npos);
  CHECK(build_err("critical(critical(snapkv))").find("critical cannot wrap another critical") != std::string::npos);
  CHECK(build_err("chunk(ada(snapkv))").find("must be a plain scorer") != std::string::npos);
  CHECK(build_err("ada(full)").find("ada: base rule 'full' does not produce per-token scores") != std::string::npos);
  CHECK(build_err("snapkv(kernel=4)") == "rule spec 'snapkv(kernel=4)': snapkv: parameter 'kernel': must be odd, got 4");
  CHECK(build_err("ada(alpha=1.5)").find("parameter 'alpha': 1.5 is out of range [0, 1]") != std::string::npos);
  CHECK(make_rule("critical(ada)")->spec() ==
        "critical(ada(snapkv(window=32,kernel=7,pool=max,agg=mean,gqa=mean,order=pool_then_reduce),alpha=0.2,variant=B,"
        "normalize=false,skip=0,window_in_floor=false),alpha=0.5,eps=1e-04,norm=l1,floor_in_stage1=true)");
}

TEST_CASE("every rule of 'default' selects on a synthetic window-only layer with its defaults") {
  auto L = synthetic_test_layer(8, 2, 1, 5);
  const auto bs = budgets();
  for (const auto& rule : make_rules("default")) {
    CAPTURE(rule->spec());
    const auto sel = rule->select(L->input(), bs);
    REQUIRE(sel.size() == bs.size());
    for (const auto& s : sel) {
      CHECK(s.n_c == L->n_c);
      CHECK((s.units == L->data.num_kv_heads || s.units == L->data.num_heads));
      CHECK(s.units == (s.mode == GqaMode::kv ? L->data.num_kv_heads : L->data.num_heads));
      CHECK(s.kept.size() == static_cast<std::size_t>(s.units * s.n_c));
    }
  }
}
