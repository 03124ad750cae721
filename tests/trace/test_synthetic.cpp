// The synthetic generator: determinism, layout, and the attention structure it promises.
#include <doctest/doctest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/error.h"
#include "testutil/testutil.h"
#include "trace/synthetic.h"
#include "trace/trace_reader.h"
#include "trace_test_util.h"

using namespace kvsim;
using namespace kvsim::test;

namespace {

// Float64 softmax attention of query row `row` of head h over keys [0, t] (causal).
std::vector<double> attention(const LayerData& L, const TraceMeta& m, int h, i64 row) {
  const i64 t = m.q_pos[row];
  const int g = h / m.group_size();
  std::vector<double> w(static_cast<std::size_t>(t + 1));
  double mx = -1e300;
  for (i64 p = 0; p <= t; ++p) {
    double s = 0;
    for (int j = 0; j < L.head_dim; ++j) s += double(L.q_row(h, row)[j]) * L.k_row(g, p)[j];
    w[p] = s * m.attn_scale;
    mx = std::max(mx, w[p]);
  }
  double z = 0;
  for (double& x : w) z += (x = std::exp(x - mx));
  for (double& x : w) x /= z;
  return w;
}

SynthOptions medium_options() {
  SynthOptions o;
  o.num_layers = 3;
  o.num_heads = 8;
  o.num_kv_heads = 2;
  o.head_dim = 64;
  o.hidden_size = 128;
  o.seq_len = 2048;
  o.question_len = 32;
  o.gen_len = 16;
  o.window = 64;
  o.seed = 11;
  return o;
}

}  // namespace

TEST_CASE("synthetic: metadata layout") {
  const SynthOptions o = medium_options();
  const TraceMeta m = synth_meta(o);
  CHECK(m.seq_len == 2048);
  CHECK(m.context_end() == 2000);
  CHECK(m.prefill_len == 2032);
  CHECK(m.num_queries() == 64 + 32 + 16);
  CHECK(m.q_pos.front() == 1936);
  CHECK(m.q_pos.back() == 2047);
  REQUIRE(m.spans.count("needle"));
  const auto [a, b] = m.spans.at("needle");
  CHECK(b - a == 16);
  CHECK(a >= o.num_sinks);
  CHECK(b <= 2000 - 64);
  CHECK(m.spans.at("question") == std::pair<i64, i64>{2000, 2032});
  SynthOptions all = o;
  all.all_queries = true;
  CHECK(synth_meta(all).num_queries() == 2048);
  SynthOptions bad = o;
  bad.num_kv_heads = 3;
  CHECK_THROWS_WITH_AS(synth_meta(bad), doctest::Contains("--kv-heads"), Error);
  bad = o;
  bad.question_len = 2048;
  CHECK_THROWS_AS(synth_meta(bad), Error);
  bad = o;
  bad.head_dim = 7;
  CHECK_THROWS_AS(synth_meta(bad), Error);
}

TEST_CASE("synthetic: deterministic from the seed, whatever the thread count") {
  SynthOptions o = tiny_options(5);
  const TraceMeta m = synth_meta(o);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const LayerData a = synth_layer(o, m, 1);
  omp_set_num_threads(3);
  const LayerData b = synth_layer(o, m, 1);
  omp_set_num_threads(threads);
  CHECK(a.q == b.q);
  CHECK(a.k == b.k);
  CHECK(a.v == b.v);
  CHECK(a.o_proj == b.o_proj);
  o.seed = 6;
  const LayerData c = synth_layer(o, synth_meta(o), 1);
  CHECK(c.k != a.k);
  CHECK(synth_layer(o, m, 0).k != c.k);  // layers differ
}

TEST_CASE("synthetic: o_proj scale, outlier key channels, heterogeneous value norms") {
  const SynthOptions o = medium_options();
  const TraceMeta m = synth_meta(o);
  const LayerData L = synth_layer(o, m, 1);
  // o_proj entries ~ N(0, 1/(H*d)).
  double s2 = 0;
  for (float x : L.o_proj) s2 += double(x) * x;
  CHECK(s2 / L.o_proj.size() == doctest::Approx(1.0 / (o.num_heads * o.head_dim)).epsilon(0.05));
  // Outlier channels: the largest per-channel mean |k| is far above the median channel.
  for (int g = 0; g < o.num_kv_heads; ++g) {
    std::vector<double> ch(o.head_dim, 0);
    for (i64 p = 0; p < m.seq_len; ++p)
      for (int j = 0; j < o.head_dim; ++j) ch[j] += std::fabs(L.k_row(g, p)[j]);
    std::vector<double> sorted = ch;
    std::sort(sorted.begin(), sorted.end());
    CHECK(sorted.back() > 3 * sorted[o.head_dim / 2]);
  }
  // Value norms spread log-normally (sigma 0.5 by default).
  std::vector<double> logn;
  for (i64 p = o.num_sinks; p < m.seq_len; ++p) {
    double n2 = 0;
    for (int j = 0; j < o.head_dim; ++j) n2 += double(L.v_row(0, p)[j]) * L.v_row(0, p)[j];
    logn.push_back(0.5 * std::log(n2));
  }
  const double mean = std::accumulate(logn.begin(), logn.end(), 0.0) / logn.size();
  double var = 0;
  for (double x : logn) var += (x - mean) * (x - mean);
  CHECK(std::sqrt(var / logn.size()) == doctest::Approx(0.5).epsilon(0.15));
}

TEST_CASE("synthetic: sinks, recency, heavy hitters, and needle retrieval") {
  const SynthOptions o = medium_options();
  const TraceMeta m = synth_meta(o);
  const auto [na, nb] = m.spans.at("needle");
  const i64 ctx = m.context_end();
  for (int layer = 0; layer < o.num_layers; ++layer) {
    CAPTURE(layer);
    const LayerData L = synth_layer(o, m, layer);
    double best_needle = 0, sum_sink = 0, best_local = 0;
    int heads_sink = 0;
    for (int h = 0; h < o.num_heads; ++h) {
      double needle = 0, sink = 0, local = 0, local_uniform = 0;
      int n_eval = 0, n_win = 0;
      for (i64 row = 0; row < m.num_queries(); ++row) {
        const i64 t = m.q_pos[row];
        const auto w = attention(L, m, h, row);
        if (t >= ctx) {
          for (i64 p = na; p < nb; ++p) needle += w[p];
          ++n_eval;
        } else {
          for (i64 p = 0; p < o.num_sinks; ++p) sink += w[p];
          for (i64 p = t - 7; p <= t; ++p) local += w[p];
          local_uniform += 8.0 / (t + 1);
          ++n_win;
        }
      }
      best_needle = std::max(best_needle, needle / n_eval);
      best_local = std::max(best_local, local / local_uniform);
      sink /= n_win;
      sum_sink += sink;
      heads_sink += sink > 0.2;
    }
    // Sinks: every head puts far more than the uniform share (4/2000) on the first 4 tokens,
    // and several heads put a large fraction there.
    CHECK(sum_sink / o.num_heads > 0.2);
    CHECK(heads_sink >= 2);
    // Recency: in the most local head, the last 8 positions get over 10x their uniform share.
    CHECK(best_local > 10);
    // Needle: from layer 1 on, some head retrieves it from question/generated queries; layer 0
    // has no retrieval heads, so its needle mass stays small.
    if (layer >= 1) CHECK(best_needle > 0.5);
    else CHECK(best_needle < 0.2);
  }
  // Heavy hitters: context tokens other than sinks with a large key component along the sink
  // direction exist (a few percent of tokens have key norms far above the median).
  const LayerData L = synth_layer(o, m, 2);
  std::vector<double> norms;
  for (i64 p = o.num_sinks; p < ctx; ++p) {
    double n2 = 0;
    for (int j = 0; j < o.head_dim; ++j) n2 += double(L.k_row(0, p)[j]) * L.k_row(0, p)[j];
    norms.push_back(std::sqrt(n2));
  }
  std::vector<double> sorted = norms;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  const auto heavy = std::count_if(norms.begin(), norms.end(), [&](double x) { return x > 1.5 * median; });
  CHECK(heavy > 0.003 * norms.size());
  CHECK(heavy < 0.05 * norms.size());
}

TEST_CASE("synthetic: written trace reads back and validates, interleaved RoPE too") {
  TempDir tmp("synth");
  SynthOptions o = tiny_options(9);
  o.rope_style = RopeStyle::interleaved;
  const std::string p = tmp.file("s.h5");
  write_tiny(p, StorageDtype::float32, o);
  TraceReader r(p);
  CHECK(r.meta().rope_style == RopeStyle::interleaved);
  const LayerData got = r.read_layer(1);
  const LayerData want = synth_layer(o, synth_meta(o), 1);
  CHECK(got.k == want.k);
  CHECK(got.q == want.q);
}
