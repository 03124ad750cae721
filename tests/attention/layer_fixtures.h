#pragma once
// Synthetic layers built in memory for the attention/replay tests, and an independent float64
// brute-force oracle (plain loops) of rules doc 1.3 / 3.1 / 3.2.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <vector>

#include "core/selection.h"
#include "trace/layer_data.h"
#include "trace/trace_meta.h"

namespace kvsim::test {

struct LayerShape {
  int H = 4, Hkv = 2, d = 8, D = 16;
  i64 S = 48, n_c = 30;
  bool o_proj = true;
  bool structured = false;  // attention sinks and heavy value rows
};

inline TraceMeta make_meta(const LayerShape& s) {
  TraceMeta m;
  m.path = "synthetic";
  m.model = "synthetic";
  m.num_layers = 1;
  m.num_heads = s.H;
  m.num_kv_heads = s.Hkv;
  m.head_dim = s.d;
  m.hidden_size = s.D;
  m.attn_scale = 1.0 / std::sqrt(static_cast<double>(s.d));
  m.seq_len = s.S;
  m.prefill_len = s.S;
  m.input_ids.assign(s.S, 1);
  m.segment.assign(s.S, kContext);
  for (i64 j = s.n_c; j < s.S; ++j) m.segment[j] = kQuestion;
  for (i64 j = 0; j < s.S; ++j) m.q_pos.push_back(j);  // every query stored
  m.has_o_proj = s.o_proj;
  return m;
}

inline LayerData make_layer(const LayerShape& s, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> N(0.f, 1.f);
  LayerData L;
  L.layer = 0;
  L.num_heads = s.H;
  L.num_kv_heads = s.Hkv;
  L.head_dim = s.d;
  L.hidden_size = s.D;
  L.seq_len = s.S;
  L.num_q = s.S;
  L.q.resize(static_cast<std::size_t>(s.H) * s.S * s.d);
  L.k.resize(static_cast<std::size_t>(s.Hkv) * s.S * s.d);
  L.v.resize(static_cast<std::size_t>(s.Hkv) * s.S * s.d);
  for (auto& x : L.q) x = 1.5f * N(rng);
  for (auto& x : L.k) x = N(rng);
  for (auto& x : L.v) x = N(rng);
  if (s.structured) {
    // Sink at 0, a few heavy keys and values: peaked attention, uneven value norms.
    for (int g = 0; g < s.Hkv; ++g)
      for (i64 j : {i64{0}, s.S / 3, s.S / 2})
        for (int c = 0; c < s.d; ++c) {
          L.k[(g * s.S + j) * s.d + c] *= 4.f;
          L.v[(g * s.S + j) * s.d + c] *= 3.f;
        }
  }
  if (s.o_proj) {
    L.o_proj.resize(static_cast<std::size_t>(s.D) * s.H * s.d);
    for (auto& x : L.o_proj) x = N(rng) / std::sqrt(static_cast<float>(s.d));
  }
  return L;
}

inline Selection random_selection(const LayerShape& s, GqaMode mode, double keep, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> U(0, 1);
  Selection sel(mode, mode == GqaMode::kv ? s.Hkv : s.H, s.n_c);
  for (auto& k : sel.kept) k = U(rng) < keep;
  return sel;
}

// ---- float64 oracle --------------------------------------------------------------------------

struct OracleQuery {
  double F, l1, l2, rel_l1, rel_l2, ada, theta;
};
struct OracleLayer {
  std::vector<OracleQuery> head;  // [h * n + qi]
  std::vector<double> l1, l2, rel_l1, rel_l2, ada, theta;
};

// W[c][e] of head h (identity when there is no o_proj).
inline std::vector<double> project(const LayerData& L, int h, const std::vector<double>& x) {
  if (!L.has_o_proj()) return x;
  std::vector<double> y(L.hidden_size, 0.0);
  const int Hd = L.num_heads * L.head_dim;
  for (int e = 0; e < L.hidden_size; ++e)
    for (int c = 0; c < L.head_dim; ++c) y[e] += x[c] * L.o_proj[e * Hd + h * L.head_dim + c];
  return y;
}
inline double l1n(const std::vector<double>& x) { double s = 0; for (double v : x) s += std::fabs(v); return s; }
inline double l2n(const std::vector<double>& x) { double s = 0; for (double v : x) s += v * v; return std::sqrt(s); }

inline double oracle_nu(const LayerData& L, int h, i64 j, int kind /*0 l1, 1 l2, 2 upper*/) {
  const int d = L.head_dim, g = h / (L.num_heads / L.num_kv_heads);
  std::vector<double> v(d);
  for (int c = 0; c < d; ++c) v[c] = L.v[(g * L.seq_len + j) * d + c];
  if (kind == 2) {
    if (!L.has_o_proj()) return l1n(v);
    const int Hd = L.num_heads * d;
    double s = 0;
    for (int c = 0; c < d; ++c)
      for (int e = 0; e < L.hidden_size; ++e) s += std::fabs(v[c]) * std::fabs(L.o_proj[e * Hd + h * d + c]);
    return s;
  }
  const auto y = project(L, h, v);
  return kind == 0 ? l1n(y) : l2n(y);
}

// What the cache gives back instead of the trace's rows: given(h, qi, j, k, v) fills head h's key
// and value row of position j as query qi sees them (d values each, the trace's on entry).
using GivenRows = std::function<void(int h, i64 qi, i64 j, std::vector<double>& k, std::vector<double>& v)>;

// support(h, qi, j) -> kept?; given: rows the cache gives back (null: the trace's own).
template <class Support>
OracleLayer oracle_given(const TraceMeta& meta, const LayerData& L, const std::vector<i64>& rows, Support support,
                         const GivenRows& given) {
  const int H = L.num_heads, d = L.head_dim, G = H / L.num_kv_heads;
  const i64 n = static_cast<i64>(rows.size());
  const int width = L.has_o_proj() ? L.hidden_size : d;
  OracleLayer out;
  out.head.resize(H * n);
  for (auto* v : {&out.l1, &out.l2, &out.rel_l1, &out.rel_l2, &out.ada, &out.theta}) v->assign(n, 0.0);
  for (i64 qi = 0; qi < n; ++qi) {
    const i64 t = meta.q_pos[rows[qi]];
    std::vector<double> Dlayer(L.has_o_proj() ? width : H * d, 0.0), y(L.has_o_proj() ? width : H * d, 0.0);
    double C = 0, miss = 0, thsum = 0, verr_sum = 0;
    for (int h = 0; h < H; ++h) {
      const int g = h / G;
      auto trace_rows = [&](i64 j, std::vector<double>& k, std::vector<double>& v) {
        k.assign(d, 0.0);
        v.assign(d, 0.0);
        for (int c = 0; c < d; ++c) {
          k[c] = L.k[(g * L.seq_len + j) * d + c];
          v[c] = L.v[(g * L.seq_len + j) * d + c];
        }
      };
      auto logits = [&](bool use_given) {
        std::vector<double> s(t + 1), k, v;
        for (i64 j = 0; j <= t; ++j) {
          trace_rows(j, k, v);
          if (use_given) given(h, qi, j, k, v);
          double acc = 0;
          for (int c = 0; c < d; ++c) acc += static_cast<double>(L.q[(h * L.num_q + rows[qi]) * d + c]) * k[c];
          s[j] = acc * meta.attn_scale;
          if (meta.attn_softcap > 0) s[j] = meta.attn_softcap * std::tanh(s[j] / meta.attn_softcap);
        }
        return s;
      };
      auto softmax = [&](std::vector<double> s, const std::vector<bool>& keep) {
        double mx = -1e300;
        for (i64 j = 0; j <= t; ++j) if (keep[j]) mx = std::max(mx, s[j]);
        double z = 0;
        for (i64 j = 0; j <= t; ++j) { s[j] = keep[j] ? std::exp(s[j] - mx) : 0.0; z += s[j]; }
        for (auto& x : s) x /= z;
        return s;
      };
      std::vector<bool> all(t + 1, true), P(t + 1);
      for (i64 j = 0; j <= t; ++j) P[j] = support(h, qi, j);
      const auto a = softmax(logits(false), all);
      std::vector<double> o(d, 0), oP(d, 0);
      double F = 0, c0 = 0, gP = 0, numax = 0;
      for (i64 j = 0; j <= t; ++j) {
        const double nu = oracle_nu(L, h, j, 0);
        numax = std::max(numax, nu);
        c0 += a[j] * nu;
        if (P[j]) { F += a[j]; gP += a[j] * nu; }
        for (int c = 0; c < d; ++c) {
          const double v = L.v[(g * L.seq_len + j) * d + c];
          o[c] += a[j] * v;
          if (P[j]) oP[c] += a[j] * v;
        }
      }
      std::vector<double> delta(d);
      // Given rows: tanh(r/4), r the range over P of the logit shift; the largest value error
      // through o_proj over P.
      double tilt = 0, numaxP = 0, verr = 0;
      if (given) {
        const auto z = logits(false), zp = logits(true);
        double lo = 1e300, hi = -1e300;
        std::vector<double> op(d, 0), k, v, dv(d);
        const auto ap = softmax(zp, P);
        for (i64 j = 0; j <= t; ++j) {
          if (!P[j]) continue;
          lo = std::min(lo, zp[j] - z[j]);
          hi = std::max(hi, zp[j] - z[j]);
          numaxP = std::max(numaxP, oracle_nu(L, h, j, 0));
          trace_rows(j, k, v);
          for (int c = 0; c < d; ++c) dv[c] = -v[c];
          given(h, qi, j, k, v);
          for (int c = 0; c < d; ++c) {
            dv[c] += v[c];
            op[c] += ap[j] * v[c];
          }
          verr = std::max(verr, l1n(project(L, h, dv)));
        }
        tilt = std::tanh((hi - lo) / 4);
        for (int c = 0; c < d; ++c) delta[c] = o[c] - op[c];
      } else {
        for (int c = 0; c < d; ++c) delta[c] = o[c] - oP[c] / F;
      }
      const auto Dh = project(L, h, delta), yh = project(L, h, o);
      OracleQuery& r = out.head[h * n + qi];
      r.F = F;
      r.l1 = l1n(Dh);
      r.l2 = l2n(Dh);
      r.rel_l1 = r.l1 / l1n(yh);
      r.rel_l2 = r.l2 / l2n(yh);
      r.ada = 2 * (1 - F) * numax + 2 * tilt * numaxP + verr;
      r.theta = c0 - (2 - 1 / F) * gP + 2 * tilt * numaxP + verr;
      C = std::max(C, numax);
      miss += 1 - F + tilt;
      verr_sum += verr;
      thsum += r.theta;
      for (std::size_t e = 0; e < Dh.size(); ++e) {
        const std::size_t at = L.has_o_proj() ? e : h * d + e;
        Dlayer[at] += Dh[e];
        y[at] += yh[e];
      }
    }
    out.l1[qi] = l1n(Dlayer);
    out.l2[qi] = l2n(Dlayer);
    out.rel_l1[qi] = out.l1[qi] / l1n(y);
    out.rel_l2[qi] = out.l2[qi] / l2n(y);
    out.ada[qi] = 2 * C * miss + verr_sum;
    out.theta[qi] = thsum;
  }
  return out;
}

// The trace's own rows, or ThinK's: `channels` (a key channel mask per KV head) zeroes the pruned
// channels of the keys below channel_span (its kept span; tokens from n_c on are whole).
template <class Support>
OracleLayer oracle(const TraceMeta& meta, const LayerData& L, const std::vector<i64>& rows, Support support,
                   const std::vector<std::uint8_t>& channels = {}, i64 channel_span = 0) {
  if (channels.empty()) return oracle_given(meta, L, rows, support, nullptr);
  const int d = L.head_dim, G = L.num_heads / L.num_kv_heads;
  return oracle_given(meta, L, rows, support,
                      [&](int h, i64, i64 j, std::vector<double>& k, std::vector<double>&) {
                        if (j >= channel_span) return;
                        for (int c = 0; c < d; ++c)
                          if (!channels[(h / G) * d + c]) k[c] = 0;
                      });
}

}  // namespace kvsim::test
