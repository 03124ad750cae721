// ExpectedAttention (rules doc 2.11) and the RoPE helper it relies on: rotate/de-rotate identity,
// direct formula, Llama-3 scaling, float64 oracle of the scores from the true pre-RoPE queries.
#include "test_h2o_fixture.h"

#include "core/error.h"
#include "rules/budget.h"
#include "rules/rope.h"

using namespace kvsim;
using namespace kvsim::test_rules_more;

TEST_CASE("rope: de-rotation inverts rotation; rotation matches the direct formula (half, interleaved)") {
  std::mt19937_64 rng(4);
  std::normal_distribution<double> N01;
  for (RopeStyle style : {RopeStyle::half, RopeStyle::interleaved}) {
    const int d = 16;
    const Rope rope(d, style, 10000.0);
    for (i64 pos : {0, 1, 7, 100, 4097, 32767}) {
      std::vector<double> x(d), want(d);
      std::vector<float> xf(d), rot(d), back(d);
      for (int c = 0; c < d; ++c) xf[c] = static_cast<float>(x[c] = N01(rng));
      rope.rotate(xf.data(), pos, rot.data());
      rope.derotate(rot.data(), pos, back.data());
      rope_direct(x.data(), want.data(), d, static_cast<double>(pos), 10000.0, style == RopeStyle::half);
      for (int c = 0; c < d; ++c) {
        CHECK(back[c] == doctest::Approx(xf[c]).epsilon(1e-5).scale(1.0));
        CHECK(rot[c] == doctest::Approx(want[c]).epsilon(1e-5).scale(1.0));
      }
      if (pos == 1) {
        // Pair 0 is rotated by exactly 1 radian: components (0, d/2) for half, (0, 1) interleaved.
        const int b = style == RopeStyle::half ? d / 2 : 1;
        CHECK(rot[0] == doctest::Approx(x[0] * std::cos(1.0) - x[b] * std::sin(1.0)).epsilon(1e-6));
        CHECK(rot[b] == doctest::Approx(x[0] * std::sin(1.0) + x[b] * std::cos(1.0)).epsilon(1e-6));
      }
    }
    std::vector<double> c, s;
    rope.mean_rotation(50, 20, c, s);
    for (int i = 0; i < d / 2; ++i) {
      double cc = 0, ss = 0;
      for (int p = 50; p < 70; ++p) {
        cc += std::cos(rope_angle(p, i, d, 10000.0)) / 20;
        ss += std::sin(rope_angle(p, i, d, 10000.0)) / 20;
      }
      CHECK(c[i] == doctest::Approx(cc).epsilon(1e-12));
      CHECK(s[i] == doctest::Approx(ss).epsilon(1e-12));
    }
  }
}

TEST_CASE("rope: partial rotary (rotary_dim < head_dim) rotates the first components only") {
  const int d = 16, r = 8;
  std::mt19937_64 rng(9);
  std::normal_distribution<double> N01;
  for (RopeStyle style : {RopeStyle::half, RopeStyle::interleaved}) {
    const Rope rope(d, style, 10000.0, "", "t", r);
    CHECK(rope.pairs() == r / 2);
    CHECK(rope.inv_freq().size() == static_cast<std::size_t>(r / 2));
    for (i64 pos : {1, 77, 3000}) {
      std::vector<double> x(r), want(r);
      std::vector<float> xf(d), rot(d), back(d);
      for (int c = 0; c < d; ++c) xf[c] = static_cast<float>(N01(rng));
      for (int c = 0; c < r; ++c) x[c] = xf[c];
      rope.rotate(xf.data(), pos, rot.data());
      rope.derotate(rot.data(), pos, back.data());
      // The rotated part is RoPE of a head of size r (frequencies theta^(-2i/r)); the rest passes.
      rope_direct(x.data(), want.data(), r, static_cast<double>(pos), 10000.0, style == RopeStyle::half);
      for (int c = 0; c < r; ++c) CHECK(rot[c] == doctest::Approx(want[c]).epsilon(1e-5).scale(1.0));
      for (int c = r; c < d; ++c) CHECK(rot[c] == xf[c]);
      for (int c = 0; c < d; ++c) CHECK(back[c] == doctest::Approx(xf[c]).epsilon(1e-5).scale(1.0));
    }
  }
  TraceMeta m;
  m.head_dim = d;
  m.rotary_dim = r;
  m.rope_theta = 500.0;
  m.layer_attrs.resize(2);
  m.layer_attrs[1].rope_theta = 7.0;
  CHECK(Rope::from_meta(m, 0).rotary_dim() == r);
  CHECK(Rope::from_meta(m, 0).inv_freq()[1] == doctest::Approx(std::pow(500.0, -2.0 / r)));
  CHECK(Rope::from_meta(m, 1).inv_freq()[1] == doctest::Approx(std::pow(7.0, -2.0 / r)));
  CHECK_THROWS_AS(Rope(d, RopeStyle::half, 1e4, "", "t", 5), Error);
}

TEST_CASE("rope: Llama-3 and linear scaling; unsupported scaling is a clear error") {
  const int d = 128;
  const double theta = 500000.0;
  const Rope plain(d, RopeStyle::half, theta);
  const Rope l3(d, RopeStyle::half, theta,
                R"({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8192, "rope_type": "llama3"})");
  for (int i = 0; i < d / 2; ++i) {
    const double f = 1.0 / std::pow(theta, 2.0 * i / d), wavelen = 2 * M_PI / f;
    double want = f;                            // wavelength < 8192 / 4: unchanged
    if (wavelen > 8192) want = f / 8;           // > 8192 / 1: divided by the factor
    else if (wavelen >= 2048) {                 // in between: smooth interpolation
      const double smooth = (8192 / wavelen - 1) / (4 - 1);
      want = (1 - smooth) * f / 8 + smooth * f;
    }
    CHECK(l3.inv_freq()[i] == doctest::Approx(want).epsilon(1e-6));
  }
  CHECK(l3.inv_freq()[0] == plain.inv_freq()[0]);
  CHECK(l3.inv_freq()[63] == doctest::Approx(plain.inv_freq()[63] / 8).epsilon(1e-6));
  const Rope lin(d, RopeStyle::half, theta, R"({"type": "linear", "factor": 4})");
  CHECK(lin.inv_freq()[5] == doctest::Approx(plain.inv_freq()[5] / 4).epsilon(1e-6));
  CHECK(Rope(d, RopeStyle::half, theta, "null").inv_freq() == plain.inv_freq());
  try {
    Rope(d, RopeStyle::half, theta, R"({"rope_type": "yarn", "factor": 4})", "t.h5");
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("t.h5: rope_scaling: scaling type 'yarn' is not supported") == 0);
  }
  CHECK_THROWS_AS(Rope(d, RopeStyle::half, theta, R"({"rope_type": "llama3", "factor": 8})"), Error);
  CHECK_THROWS_AS(Rope(d, RopeStyle::half, theta, R"({"rope_type" "linear"})"), Error);
}

namespace {

// Float64 ExpectedAttention from the TRUE pre-RoPE queries (no de-rotation), per unit.
std::vector<std::vector<double>> oracle_expected(const Layer& L, i64 n_future, i64 sink, bool cov_on, bool vnorm,
                                                 double eps, const std::string& gqa) {
  const int H = L.data.num_heads, d = L.data.head_dim, G = L.G();
  const i64 n = L.n_c, S = L.data.seq_len, m = n - sink;
  const double s = L.meta.attn_scale;
  const bool half = L.meta.rope_style == RopeStyle::half;
  // Mean rotation matrix over positions [n, n + n_future), built column by column.
  std::vector<double> R(d * d, 0.0);
  for (i64 p = n; p < n + n_future; ++p)
    for (int col = 0; col < d; ++col) {
      std::vector<double> e(d, 0.0), r(d);
      e[col] = 1;
      rope_direct(e.data(), r.data(), d, static_cast<double>(p), L.meta.rope_theta, half);
      for (int row = 0; row < d; ++row) R[row * d + col] += r[row] / n_future;
    }
  std::vector<std::vector<double>> head(H, std::vector<double>(n, 0.0));
  for (int h = 0; h < H; ++h) {
    std::vector<double> mu(d, 0.0), cov(d * d, 0.0);
    for (i64 t = sink; t < n; ++t)
      for (int c = 0; c < d; ++c) mu[c] += L.pre_q[(h * S + t) * d + c] / m;
    if (cov_on)
      for (i64 t = sink; t < n; ++t)
        for (int a = 0; a < d; ++a)
          for (int b = 0; b < d; ++b)
            cov[a * d + b] += (L.pre_q[(h * S + t) * d + a] - mu[a]) * (L.pre_q[(h * S + t) * d + b] - mu[b]) / m;
    std::vector<double> mub(d, 0.0), covb(d * d, 0.0);
    for (int a = 0; a < d; ++a)
      for (int b = 0; b < d; ++b) mub[a] += R[a * d + b] * mu[b];
    for (int a = 0; a < d; ++a)
      for (int b = 0; b < d; ++b)
        for (int x = 0; x < d; ++x)
          for (int y = 0; y < d; ++y) covb[a * d + b] += R[a * d + x] * cov[x * d + y] * R[b * d + y];
    std::vector<double> z;
    for (i64 j = sink; j < n; ++j) {
      double lin = 0, quad = 0;
      for (int a = 0; a < d; ++a) {
        lin += mub[a] * L.k(h / G, j, a);
        for (int b = 0; b < d; ++b) quad += L.k(h / G, j, a) * covb[a * d + b] * L.k(h / G, j, b);
      }
      z.push_back(s * lin + s * s * quad / 2);
    }
    const auto p = softmax(z);
    for (i64 j = sink; j < n; ++j) head[h][j] = p[j - sink];
  }
  std::vector<std::vector<double>> units;
  if (gqa == "query") units = head;
  else
    for (int g = 0; g < H / G; ++g) {
      std::vector<double> r(n, 0.0);
      for (int k = 0; k < G; ++k)
        for (i64 j = 0; j < n; ++j)
          r[j] = gqa == "max" ? (k == 0 ? head[g * G][j] : std::max(r[j], head[g * G + k][j]))
                              : r[j] + head[g * G + k][j] / (gqa == "mean" ? G : 1);
      units.push_back(r);
    }
  if (vnorm)
    for (std::size_t u = 0; u < units.size(); ++u) {
      const int g = gqa == "query" ? static_cast<int>(u) / G : static_cast<int>(u);
      for (i64 j = sink; j < n; ++j) {
        double vn = 0;
        for (int c = 0; c < d; ++c) vn += L.v(g, j, c) * L.v(g, j, c);
        units[u][j] = (units[u][j] + eps) * std::sqrt(vn);
      }
    }
  for (auto& u : units)
    for (i64 j = 0; j < sink; ++j) u[j] = 0;  // protected
  return units;
}

}  // namespace

TEST_CASE("expected: scores from de-rotated queries equal the float64 oracle from true pre-RoPE queries") {
  for (RopeStyle style : {RopeStyle::half, RopeStyle::interleaved})
    for (int G : {1, 2, 4}) {
      const Layer L = make_layer(2 * G, 2, 8, 60, 60, 500 + G, 1.0, true, style);
      for (const auto& [params, gqa] : std::vector<std::pair<std::string, std::string>>{
               {"", "mean"},
               {"n_future=16,n_sink=2,eps=0.01", "max"},
               {"covariance=false,vnorm=false", "query"},
               {"n_sink=0,n_future=3", "sum"}}) {
        CAPTURE(G);
        CAPTURE(params);
        const auto get = [&](const std::string& key, double def) {
          const auto at = params.find(key + "=");
          return at == std::string::npos ? def : std::stod(params.substr(at + key.size() + 1));
        };
        const i64 sink = static_cast<i64>(get("n_sink", 4)), nf = static_cast<i64>(get("n_future", 512));
        const bool cov = params.find("covariance=false") == std::string::npos;
        const bool vn = params.find("vnorm=false") == std::string::npos;
        const auto want = oracle_expected(L, nf, sink, cov, vn, get("eps", 0), gqa);
        for (const char* space : {"log", "linear"}) {
          CAPTURE(space);
          const std::string spec =
              "expected(" + params + (params.empty() ? "" : ",") + "gqa=" + gqa + ",space=" + space + ")";
          const UnitScores s = scores_of(spec, L.input());
          REQUIRE(s.units == static_cast<int>(want.size()));
          CHECK(s.n_protected == sink);
          CHECK(s.log_space == (std::string(space) == "log"));
          std::vector<std::uint8_t> protect(L.n_c, 0);
          std::fill(protect.begin(), protect.begin() + sink, 1);
          const auto sels = rule(spec)->select(L.input(), {Budget::parse("12"), Budget::parse("0.5")});
          for (int u = 0; u < s.units; ++u) {
            std::vector<float> got = s.linear_scores(u);  // exp of the log scores
            std::fill(got.begin(), got.begin() + sink, 0.0f);
            check_close(got.data(), want[u], 1e-5);
            check_kept(sels[0].unit_mask(u), oracle_keep(want[u], 12, protect), want[u]);
            check_kept(sels[1].unit_mask(u), oracle_keep(want[u], 30, protect), want[u]);
          }
        }
      }
    }
}

TEST_CASE("expected: errors for missing queries and spans not longer than the sinks") {
  Layer L = make_layer(2, 1, 4, 10, 8, 9, 1.0, true);
  RuleInput in = L.input();
  in.n_c = 4;
  CHECK_THROWS_WITH_AS(rule("expected")->select(in, {Budget::parse("2")}),
                       doctest::Contains("not more than n_sink = 4"), Error);
  L.meta.q_pos[5] = 11;  // position 5 not stored any more
  std::sort(L.meta.q_pos.begin(), L.meta.q_pos.end());
  CHECK_THROWS_WITH_AS(rule("expected")->select(L.input(), {Budget::parse("2")}),
                       doctest::Contains("q_pos: expected needs the stored queries of positions [4, 8)"), Error);
}

TEST_CASE("expected on the sample trace (interleaved RoPE): runs, keeps sinks, budget respected") {
  if (!have_sample_trace()) {
    MESSAGE("traces/niah_stories260k.h5 not present: skipped");
    return;
  }
  const Layer L = load_sample_layer(2);
  const auto sel = rule("expected")->select(L.input(), {Budget::parse("128")});
  for (int u = 0; u < sel[0].units; ++u) {
    CHECK(sel[0].kept_count(u) == 128);
    for (int j = 0; j < 4; ++j) CHECK(sel[0].unit_mask(u)[j] == 1);
  }
}
