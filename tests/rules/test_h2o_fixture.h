#pragma once
// Shared by the rules-more tests (h2o, tova, keydiff, think, expected, quest): small seeded
// synthetic layers built in memory, the real sample trace when present, and float64 helpers
// for the brute-force oracles (plain loops, written independently of lib/rules).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "rules/registry.h"
#include "rules/rule.h"
#include "rules/scored_rule.h"
#include "rules/spec.h"
#include "trace/trace_reader.h"

namespace kvsim::test_rules_more {

struct Layer {
  TraceMeta meta;
  LayerData data;
  i64 n_c = 0;
  std::vector<i64> eval_rows;
  std::vector<double> pre_q;  // [H][S][d] pre-RoPE queries when built with rope (else empty)

  RuleInput input() const {
    RuleInput in;
    in.meta = &meta;
    in.layer = 2;
    in.data = &data;
    in.n_c = n_c;
    in.eval_rows = eval_rows;
    return in;
  }
  double q(int h, i64 row, int c) const { return data.q_row(h, row)[c]; }
  double k(int g, i64 j, int c) const { return data.k_row(g, j)[c]; }
  double v(int g, i64 j, int c) const { return data.v_row(g, j)[c]; }
  int G() const { return data.num_heads / data.num_kv_heads; }
};

// Direct RoPE formula (independent of rules/rope.h): pair i rotates by pos * theta^(-2i/d), the
// angle rounded to float32 as models compute it (float inv_freq times float position); the
// rotation itself in float64.
inline double rope_angle(double pos, int i, int d, double theta) {
  const float inv = static_cast<float>(1.0 / std::pow(theta, 2.0 * i / d));
  return static_cast<double>(static_cast<float>(pos) * inv);
}
inline void rope_direct(const double* x, double* out, int d, double pos, double theta, bool half) {
  for (int i = 0; i < d / 2; ++i) {
    const int a = half ? i : 2 * i, b = half ? i + d / 2 : 2 * i + 1;
    const double ang = rope_angle(pos, i, d, theta);
    out[a] = x[a] * std::cos(ang) - x[b] * std::sin(ang);
    out[b] = x[a] * std::sin(ang) + x[b] * std::cos(ang);
  }
}

// Every position's query stored (q_pos = [0, S)); eval rows = positions >= n_c.
// with_rope: queries are generated pre-RoPE and stored rotated (keys stay random).
inline Layer make_layer(int H, int Hkv, int d, i64 S, i64 n_c, std::uint64_t seed, double q_scale = 2.0,
                        bool with_rope = false, RopeStyle style = RopeStyle::half) {
  Layer L;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> N01(0.0, 1.0);
  L.meta.path = "synthetic";
  L.meta.num_layers = 4;
  L.meta.num_heads = H;
  L.meta.num_kv_heads = Hkv;
  L.meta.head_dim = d;
  L.meta.hidden_size = H * d;
  L.meta.rope_style = style;
  L.meta.rope_theta = 10000.0;
  L.meta.attn_scale = 1.0 / std::sqrt(static_cast<double>(d));
  L.meta.prefill_len = n_c;
  L.meta.seq_len = S;
  L.meta.q_pos.resize(S);
  std::iota(L.meta.q_pos.begin(), L.meta.q_pos.end(), 0);
  L.meta.segment.assign(S, kGenerated);
  std::fill(L.meta.segment.begin(), L.meta.segment.begin() + n_c, kContext);
  L.data.layer = 2;
  L.data.num_heads = H;
  L.data.num_kv_heads = Hkv;
  L.data.head_dim = d;
  L.data.hidden_size = H * d;
  L.data.num_q = S;
  L.data.seq_len = S;
  L.data.q.resize(H * S * d);
  L.data.k.resize(Hkv * S * d);
  L.data.v.resize(Hkv * S * d);
  for (auto& x : L.data.k) x = static_cast<float>(N01(rng));
  for (auto& x : L.data.v) x = static_cast<float>(N01(rng));
  if (with_rope) L.pre_q.resize(H * S * d);
  std::vector<double> pre(d), rot(d);
  for (int h = 0; h < H; ++h)
    for (i64 t = 0; t < S; ++t) {
      for (int c = 0; c < d; ++c) pre[c] = q_scale * N01(rng) + (with_rope ? 0.7 * (c % 3) : 0.0);
      if (with_rope) {
        std::copy(pre.begin(), pre.end(), L.pre_q.begin() + (h * S + t) * d);
        rope_direct(pre.data(), rot.data(), d, static_cast<double>(t), L.meta.rope_theta,
                    style == RopeStyle::half);
      } else {
        rot = pre;
      }
      for (int c = 0; c < d; ++c) L.data.q[(h * S + t) * d + c] = static_cast<float>(rot[c]);
    }
  L.n_c = n_c;
  for (i64 t = n_c; t < S; ++t) L.eval_rows.push_back(t);
  return L;
}

inline std::string sample_trace_path() { return std::string(KVSIM_SOURCE_DIR) + "/traces/niah_stories260k.h5"; }
inline bool have_sample_trace() { return std::filesystem::exists(sample_trace_path()); }

// Layer `layer` of the sample trace, compressed at the end of the context.
inline Layer load_sample_layer(int layer) {
  TraceReader reader(sample_trace_path());
  Layer L;
  L.meta = reader.meta();
  L.data = reader.read_layer(layer);
  L.n_c = L.meta.context_end();
  for (i64 r = 0; r < L.meta.num_queries(); ++r)
    if (L.meta.q_pos[r] >= L.n_c) L.eval_rows.push_back(r);
  return L;
}

inline std::unique_ptr<Rule> rule(const std::string& spec) { return build_rule(parse_spec(spec)); }
inline UnitScores scores_of(const std::string& spec, const RuleInput& in) {
  auto r = rule(spec);
  auto* s = dynamic_cast<ScoredRule*>(r.get());
  REQUIRE(s != nullptr);
  return s->scores(in);
}

// Softmax of x in float64.
inline std::vector<double> softmax(std::vector<double> x) {
  const double m = *std::max_element(x.begin(), x.end());
  double z = 0;
  for (double& v : x) z += (v = std::exp(v - m));
  for (double& v : x) v /= z;
  return x;
}

// Oracle selection: the protected positions plus the best (k - #protected) others by score,
// ties to the lower position. Returns a 0/1 mask.
inline std::vector<std::uint8_t> oracle_keep(const std::vector<double>& score, i64 k,
                                             const std::vector<std::uint8_t>& protect = {}) {
  const i64 n = static_cast<i64>(score.size());
  std::vector<std::uint8_t> keep(n, 0);
  std::vector<i64> idx;
  for (i64 j = 0; j < n; ++j) {
    if (!protect.empty() && protect[j]) {
      keep[j] = 1;
      --k;
    } else {
      idx.push_back(j);
    }
  }
  std::stable_sort(idx.begin(), idx.end(), [&](i64 a, i64 b) { return score[a] > score[b]; });
  for (i64 i = 0; i < std::min<i64>(k, static_cast<i64>(idx.size())); ++i) keep[idx[i]] = 1;
  return keep;
}

// Mask equality, or (tolerant=true, for real traces) equality up to near-ties: every
// disagreement is within rel_tol of the boundary score of the oracle ranking.
inline void check_kept(const std::uint8_t* got, const std::vector<std::uint8_t>& want, const std::vector<double>& score,
                       bool tolerant = false, double rel_tol = 1e-5) {
  const i64 n = static_cast<i64>(want.size());
  i64 n_got = 0, n_want = 0, diff = 0;
  double lo_kept = INFINITY, hi_dropped = -INFINITY, scale = 0;
  for (i64 j = 0; j < n; ++j) {
    n_got += got[j] != 0;
    n_want += want[j];
    scale = std::max(scale, std::abs(score[j]));
    if ((got[j] != 0) != (want[j] != 0)) {
      ++diff;
      if (got[j]) lo_kept = std::min(lo_kept, score[j]);
      else hi_dropped = std::max(hi_dropped, score[j]);
    }
  }
  CHECK(n_got == n_want);
  if (!tolerant) {
    CHECK(diff == 0);
  } else if (diff > 0) {
    // Kept by the rule but not the oracle (lo_kept) vs the reverse (hi_dropped): only a near
    // tie of the oracle scores may swap them.
    CHECK(hi_dropped - lo_kept <= rel_tol * scale);
  }
}

// |a - b| <= rel * max|b| over the vectors.
inline void check_close(const float* got, const std::vector<double>& want, double rel = 1e-5) {
  double scale = 0, worst = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
  CHECK(worst <= rel * scale);
}

}  // namespace kvsim::test_rules_more
