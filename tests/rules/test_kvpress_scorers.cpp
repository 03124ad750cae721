// kvpress's attention-free and chunk-attention scorers (rules doc 2.20-2.22, 2.29): lagkv, cur,
// noncausal and cap against their float64 references (rules_reference.h) on synthetic layers storing
// every query and on the stories260K NIAH trace: scores to 1e-5 relative, kept sets equal except
// near-ties of the reference's cut; hand-checked fixtures of the arithmetic.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "rules/factory.h"
#include "rules/rope.h"
#include "rules/scored_rule.h"
#include "rules_reference.h"
#include "testutil/testutil.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

std::vector<std::unique_ptr<TestLayer>> layers() {
  std::vector<std::unique_ptr<TestLayer>> out;
  for (auto [H, Hkv, seed] : {std::tuple{4, 4, 51}, {4, 2, 52}, {8, 2, 53}}) {
    SynthOptions o;
    o.num_layers = 3;
    o.num_heads = H;
    o.num_kv_heads = Hkv;
    o.head_dim = 16;
    o.hidden_size = 48;
    o.seq_len = 700;
    o.question_len = 16;
    o.gen_len = 24;
    o.all_queries = true;
    o.seed = static_cast<std::uint64_t>(seed);
    out.push_back(synthetic_test_layer(o, 1));
  }
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (std::filesystem::exists(trace)) out.push_back(trace_test_layer(trace, 3));
  return out;
}

// Scores equal the reference's to rel (NaN = protected), kept sets equal except tokens within
// tie_tol (relative) of the reference's cut.
void check_rule(const std::string& spec, const TestLayer& L, const Mat& ref, double rel, double tie_tol) {
  CAPTURE(spec);
  auto rule = make_rule(spec);
  const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(L.input());
  double worst = 0;
  for (int u = 0; u < s.units; ++u)
    for (i64 j = 0; j < s.n_c; ++j) {
      CHECK(static_cast<bool>(s.protect[j]) == std::isnan(ref[u][j]));
      if (!s.protect[j] && ref[u][j] != 0)
        worst = std::max(worst, std::abs(s.unit(u)[j] - ref[u][j]) / std::abs(ref[u][j]));
    }
  CHECK_MESSAGE(worst <= rel, "worst relative score error " << worst);
  for (const std::string text : {"cr=0.25", "cr=0.5", "cr=0.75"}) {
    const Budget b = Budget::parse(text);
    const i64 B = b.tokens_for(L.n_c);
    const Masks want = ref_keep_scored(ref, B);
    const auto sel = rule->select(L.input(), {b});
    i64 bad = 0, near = 0;
    for (int u = 0; u < sel[0].units; ++u) {
      double cut = INFINITY;
      for (i64 j = 0; j < L.n_c; ++j)
        if (want[u][j] && !std::isnan(ref[u][j])) cut = std::min(cut, ref[u][j]);
      for (i64 j = 0; j < L.n_c; ++j)
        if (sel[0].unit_mask(u)[j] != want[u][j]) (std::abs(ref[u][j] - cut) <= tie_tol * std::abs(cut) ? near : bad) += 1;
    }
    CHECK_MESSAGE(bad == 0, text << ": " << bad << " kept-set differences (" << near << " near-ties)");
  }
}

}  // namespace

TEST_CASE("lagkv, cur, noncausal, cap equal their float64 references") {
  for (const auto& Lp : layers()) {
    const TestLayer& L = *Lp;
    CAPTURE(L.n_c);
    check_rule("lagkv(sink=4,lag=64)", L, ref_lagkv(L, 4, 64, false), 0, 0);
    check_rule("lagkv(sink=4,lag=64,cross=true)", L, ref_lagkv(L, 4, 64, true), 1e-5, 1e-5);
    check_rule("lagkv(sink=2,lag=1100)", L, ref_lagkv(L, 2, 1100, false), 1e-6, 0);  // too short: recency
    for (const std::string type : {"kv_product", "kv_avg", "key", "value"}) {
      check_rule("cur(type=" + type + ")", L, ref_cur(L, 4, type, 16), 1e-5, 1e-5);
      check_rule("cur(sink=0,type=" + type + ",local=0)", L, ref_cur(L, 0, type, 0), 1e-5, 1e-5);
    }
    check_rule("noncausal", L, ref_noncausal(L, 256), 1e-4, 1e-4);
    check_rule("noncausal(chunk=100)", L, ref_noncausal(L, 100), 1e-4, 1e-4);
    check_rule("cap", L, ref_cap(L, 4, 5.0, 512, 1e-6), 1e-5, 1e-5);
    check_rule("cap(tau=1,n_sink=0,n_future=16,eps=0)", L, ref_cap(L, 0, 1.0, 16, 0.0), 1e-5, 1e-5);
  }
}

TEST_CASE("cur: hand-checked fixture; refusals") {
  // Tokens 4..7 of KV head 0 get keys of squared norms (1, 3, 2, 2) and values of norm 1: with
  // local=4 (one block) the key leverage is (1, 3, 2, 2) / 8, the value leverage 1/4 each, so the
  // product scores are (1, 3, 2, 2) / 32 (exact in float32).
  auto Lp = synthetic_test_layer(4, 2, 1, 61);
  LayerData& d = Lp->data;
  const double norms[4] = {1, 3, 2, 2};
  for (int t = 0; t < 4; ++t)
    for (int c = 0; c < d.head_dim; ++c) {
      d.k[(4 + t) * d.head_dim + c] = c < norms[t] ? 1.0f : 0.0f;  // norm^2 = number of ones
      d.v[(4 + t) * d.head_dim + c] = c == 1 ? 1.0f : 0.0f;
    }
  auto rule = make_rule("cur(sink=4,local=4)");
  const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(Lp->input());
  CHECK(s.n_protected == 4);
  for (int t = 0; t < 4; ++t) CHECK(s.unit(0)[4 + t] == static_cast<float>(norms[t] / 32));
  CHECK_THROWS_AS(make_rule("lagkv(lag=1)"), Error);
  CHECK_THROWS_AS(make_rule("cur(type=both)"), Error);
  CHECK_THROWS_AS(make_rule("noncausal(chunk=0)"), Error);
}

TEST_CASE("threshold budgets (thr=X) and dms: every candidate scored >= X stays, per unit") {
  const auto Lp = synthetic_test_layer(8, 2, 2, 71);
  const TestLayer& L = *Lp;
  const Mat ref = ref_knorm(L);  // -||k||, per KV head
  // A threshold in the middle of the scores: the median of unit 0's.
  std::vector<double> sorted = ref[0];
  std::sort(sorted.begin(), sorted.end());
  const double X = sorted[sorted.size() / 2];
  char text[64];
  std::snprintf(text, sizeof text, "thr=%.9g", X);
  const Budget b = Budget::parse(text);
  CHECK(b.kind == Budget::Kind::threshold);
  auto rule = make_rule("dms(knorm,window=16)");
  const auto sel = rule->select(L.input(), {b});
  const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(L.input());
  CHECK(s.n_protected == 16);
  i64 differing = 0, total = 0;
  for (int u = 0; u < sel[0].units; ++u) {
    for (i64 j = 0; j < L.n_c; ++j) {
      const bool want = j >= L.n_c - 16 || s.unit(u)[j] >= b.value;
      CHECK(static_cast<bool>(sel[0].unit_mask(u)[j]) == want);
      // and by the float64 norms, except float32 near-ties of X
      const bool by_ref = j >= L.n_c - 16 || ref[u][j] >= X;
      differing += by_ref != want && std::abs(ref[u][j] - X) > 1e-6 * std::abs(X);
    }
    total += sel[0].kept_count(u);
  }
  CHECK(differing == 0);
  CHECK(sel[0].kept_count(0) != sel[0].kept_count(1));  // each unit its own count
  CHECK(sel[0].budget_tokens == (total + 1) / 2);        // the layer's mean kept count
  // Rules that allocate counts refuse a threshold with one line naming the budget.
  for (const std::string spec : {"ada(snapkv)", "pyramid(snapkv)", "oracle_greedy", "keydiff", "quest"}) {
    CAPTURE(spec);
    try {
      check_threshold_budgets(*make_rule(spec), {b});  // what the replay and kvsim.select call first
      FAIL("no error");
    } catch (const Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find(text) != std::string::npos, e.what());
    }
  }
  CHECK_THROWS_AS(Budget::parse("thr="), Error);
  CHECK_THROWS_AS(Budget::parse("thr=abc"), Error);
  CHECK_THROWS_AS(make_rule("dms(ada(snapkv))"), Error);
}

TEST_CASE("simlayerkv: lazy layers by the last query's float64 attention on the first and recent tokens") {
  std::vector<std::unique_ptr<TestLayer>> ls;
  for (int layer : {0, 1, 2}) ls.push_back(synthetic_test_layer(4, 2, layer, 91));
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (std::filesystem::exists(trace))
    for (int layer : {0, 2, 4}) ls.push_back(trace_test_layer(trace, layer));
  int lazy_seen = 0, busy_seen = 0;
  for (const auto& Lp : ls) {
    const TestLayer& L = *Lp;
    const LayerData& d = L.data;
    const i64 n = L.n_c, recent = n / 3, initial = 4, m = n - 1;
    // The last query before n_c: its attention over the prefix [0, m), mean over heads.
    double score = 0;
    for (int h = 0; h < d.num_heads; ++h) {
      const auto a = ref_softmax_prefix(L, h, n - 1);
      for (i64 j = 0; j < m; ++j)
        if (j < initial || j >= m - recent) score += a[j] / d.num_heads;
    }
    for (const double thr : {0.3, 0.6, 0.9}) {
      CAPTURE(thr);
      if (std::abs(score - thr) < 1e-6) continue;  // a float32 near-tie of the decision
      char spec[96];
      std::snprintf(spec, sizeof spec, "simlayerkv(threshold=%g,last=1,recent=%lld,initial=4)", thr,
                    static_cast<long long>(recent));
      const auto sel = make_rule(spec)->select(L.input(), {Budget::parse("0.5"), Budget::parse("0.1")});
      const bool lazy = score > thr;
      (lazy ? lazy_seen : busy_seen) += 1;
      for (const auto& s : sel)
        for (int u = 0; u < s.units; ++u)
          for (i64 j = 0; j < n; ++j)
            CHECK(static_cast<bool>(s.unit_mask(u)[j]) == (!lazy || j < initial || j >= n - (recent - 1)));
    }
  }
  CHECK(lazy_seen > 0);
  CHECK(busy_seen > 0);
}

TEST_CASE("finch: the question is the window (question-aware span), rows weighted by their causal length") {
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (!std::filesystem::exists(trace)) return;
  auto Lp = trace_test_layer(trace, 2);
  TestLayer& L = *Lp;
  auto rule = make_rule("finch");
  CHECK_THROWS_WITH_AS(rule->select(L.input(), {Budget::parse("0.2")}),
                       doctest::Contains("use --compression-point aware"), Error);
  // The question-aware span: [0, prefill end), whose last tokens are the question.
  i64 n_c = L.n_c;
  while (n_c < static_cast<i64>(L.meta.segment.size()) && L.meta.segment[n_c] == kQuestion) ++n_c;
  const i64 w = n_c - L.n_c, m = L.n_c;
  REQUIRE(w > 0);
  L.n_c = n_c;
  L.eval_rows.clear();
  for (i64 r = 0; r < static_cast<i64>(L.meta.q_pos.size()); ++r)
    if (L.meta.q_pos[r] >= n_c) L.eval_rows.push_back(r);
  L.cache = std::make_unique<LayerCache>(L.meta, L.data, L.n_c, L.eval_rows);
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads;
  Mat ref(d.num_kv_heads, std::vector<double>(n_c, NAN));  // NaN: the protected question
  for (int g = 0; g < d.num_kv_heads; ++g)
    for (i64 j = 0; j < m; ++j) ref[g][j] = 0;
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 t = m; t < n_c; ++t) {
      const auto a = ref_softmax_prefix(L, h, t);
      for (i64 j = 0; j < m; ++j) ref[h / G][j] += a[j] * static_cast<double>(t) / static_cast<double>(w * G);
    }
  check_rule("finch", L, ref, 1e-4, 1e-4);
  // chunk=L (kvpress chunk_length): every chunk keeps the budget's share of itself, by the
  // reference scores, the question (in the last chunk) first. Differences only at near-ties.
  for (const i64 chunk : {i64{512}, i64{700}}) {
    auto chunked = make_rule("finch(chunk=" + std::to_string(chunk) + ")");
    for (const std::string text : {"cr=0.5", "0.3"}) {
      CAPTURE(chunk);
      CAPTURE(text);
      const Budget b = Budget::parse(text);
      const Selection sel = chunked->select(L.input(), {b}).front();
      i64 bad = 0, total = 0;
      for (i64 c0 = 0; c0 < n_c; c0 += chunk) {
        const i64 len = std::min(chunk, n_c - c0), keep = b.share_of(len, n_c);
        total += keep;
        for (int g = 0; g < d.num_kv_heads; ++g) {
          std::vector<double> part(ref[g].begin() + c0, ref[g].begin() + c0 + len);
          i64 prot = 0;
          for (double& x : part)
            if (std::isnan(x)) x = INFINITY, ++prot;  // the question: kept first
          std::vector<std::uint8_t> want(len, 0);
          for (i64 j : ref_top(part, keep)) want[j] = 1;
          double cut = INFINITY;
          for (i64 j = 0; j < len; ++j)
            if (want[j]) cut = std::min(cut, part[j]);
          for (i64 j = 0; j < len; ++j)
            if (sel.unit_mask(g)[c0 + j] != want[j] && std::abs(part[j] - cut) > 1e-4 * std::abs(cut)) ++bad;
        }
      }
      CHECK(bad == 0);
      CHECK(sel.budget_tokens == total);
      for (int g = 0; g < d.num_kv_heads; ++g) CHECK(sel.kept_count(g) == total);
    }
  }
  // Chunks shorter than the question's share: the chunk keeps its share of the question, the
  // earliest question tokens (kvpress's top-k over their equal scores keeps torch's tie order).
  const Selection tiny = make_rule("finch(chunk=8)")->select(L.input(), {Budget::parse("cr=0.9")}).front();
  for (i64 c0 = 0; c0 < n_c; c0 += 8) {
    const i64 len = std::min<i64>(8, n_c - c0);
    for (int g = 0; g < d.num_kv_heads; ++g) {
      i64 kept = 0;
      for (i64 j = c0; j < c0 + len; ++j) kept += tiny.unit_mask(g)[j];
      CHECK(kept == std::max<i64>(1, static_cast<i64>(len * 0.1)));
      if (c0 >= m) CHECK(tiny.unit_mask(g)[c0] == 1);  // a chunk of question tokens keeps its first
    }
  }
}

TEST_CASE("leverage: exact key leverage, sums to the rank, equals a Gauss-Jordan float64 inverse") {
  std::vector<std::unique_ptr<TestLayer>> ls;
  ls.push_back(synthetic_test_layer(4, 2, 1, 95));
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (std::filesystem::exists(trace)) ls.push_back(trace_test_layer(trace, 1));
  for (const auto& Lp : ls) {
    const TestLayer& L = *Lp;
    const LayerData& d = L.data;
    const int dim = d.head_dim;
    const Rope rope = Rope::from_meta(L.meta, d.layer);
    for (const double jitter : {0.0, 0.01}) {
      CAPTURE(jitter);
      auto rule = make_rule("leverage(jitter=" + std::to_string(jitter) + ")");
      const UnitScores s = dynamic_cast<const ScoredRule&>(*rule).scores(L.input());
      CHECK(s.n_protected == 0);
      for (int g = 0; g < d.num_kv_heads; ++g) {
        // Reference: centred pre-RoPE keys, (X^T X + jitter I)^{-1} by Gauss-Jordan, then x^T A x.
        std::vector<std::vector<double>> X(L.n_c, std::vector<double>(dim));
        std::vector<double> mean(dim, 0.0);
        std::vector<float> pre(dim);
        for (i64 j = 0; j < L.n_c; ++j) {
          rope.derotate(d.k_row(g, j), j, pre.data());
          for (int c = 0; c < dim; ++c) mean[c] += (X[j][c] = pre[c]) / static_cast<double>(L.n_c);
        }
        Mat gram(dim, std::vector<double>(dim, 0.0));
        for (auto& x : X)
          for (int c = 0; c < dim; ++c) x[c] -= mean[c];
        for (int a = 0; a < dim; ++a) {
          for (int b = 0; b < dim; ++b)
            for (const auto& x : X) gram[a][b] += x[a] * x[b];
          gram[a][a] += jitter;
        }
        const Mat inv = ref_inverse(gram);
        double sum = 0, worst = 0;
        for (i64 j = 0; j < L.n_c; ++j) {
          double h = 0;
          for (int a = 0; a < dim; ++a)
            for (int b = 0; b < dim; ++b) h += X[j][a] * inv[a][b] * X[j][b];
          sum += s.unit(g)[j];
          worst = std::max(worst, std::abs(s.unit(g)[j] - h) / std::max(h, 1e-3));
          CHECK(s.unit(g)[j] <= 1.0f + 1e-5f);
        }
        CHECK_MESSAGE(worst <= 1e-4, "worst relative error " << worst);
        if (jitter == 0) CHECK(sum == doctest::Approx(dim).epsilon(1e-4));  // trace of a rank-d projection
      }
    }
  }
}

TEST_CASE("compactor: blend x z(leverage) + z(noncausal) over the span between its protected ends") {
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  auto Lp = std::filesystem::exists(trace) ? trace_test_layer(trace, 3) : nullptr;
  if (!Lp) return;
  const TestLayer& L = *Lp;
  const UnitScores s = dynamic_cast<const ScoredRule&>(*make_rule("compactor(blend=0.5)")).scores(L.input());
  CHECK(s.n_protected == 12);
  for (i64 j = 0; j < L.n_c; ++j) CHECK(static_cast<bool>(s.protect[j]) == (j < 8 || j >= L.n_c - 4));
  // The two parts on the slice [8, n_c - 4), z-normalised here in float64.
  auto part = [&](const std::string& spec) {
    const UnitScores p = dynamic_cast<const ScoredRule&>(*make_rule(spec)).scores_range(L.input(), 8, L.n_c - 4);
    double mean = 0, sq = 0;
    for (float x : p.score) mean += x / static_cast<double>(p.score.size());
    for (float x : p.score) sq += (x - mean) * (x - mean);
    const double sd = std::sqrt(sq / static_cast<double>(p.score.size() - 1));
    std::vector<double> z;
    for (float x : p.score) z.push_back((x - mean) / sd);
    return std::make_pair(p.n_c, z);
  };
  const auto [m, lev] = part("leverage");
  const auto att = part("noncausal(chunk=256)").second;
  double worst = 0;
  for (int u = 0; u < s.units; ++u)
    for (i64 j = 0; j < m; ++j) {
      const double want = 0.5 * lev[u * m + j] + att[u * m + j];
      worst = std::max(worst, std::abs(s.unit(u)[8 + j] - want) / std::max(1.0, std::abs(want)));
    }
  CHECK_MESSAGE(worst <= 1e-5, "worst error " << worst);
}
