#include "rules_reference.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <numeric>
#include <stdexcept>

#include "rules/factory.h"
#include "rules/rope.h"
#include "trace/synthetic.h"
#include "testutil/testutil.h"
#include "trace/trace_reader.h"

namespace kvsim::test {

RuleInput TestLayer::input() const {
  RuleInput in;
  in.meta = &meta;
  in.layer = data.layer;
  in.data = &data;
  in.n_c = n_c;
  in.eval_rows = eval_rows;
  in.cache = cache.get();
  return in;
}

namespace {
void finish(TestLayer& t) {
  t.n_c = t.meta.context_end();
  for (i64 r = 0; r < static_cast<i64>(t.meta.q_pos.size()); ++r)
    if (t.meta.q_pos[r] >= t.n_c) t.eval_rows.push_back(r);
  t.cache = std::make_unique<LayerCache>(t.meta, t.data, t.n_c, t.eval_rows);
}
}  // namespace

std::unique_ptr<TestLayer> synthetic_test_layer(int H, int Hkv, int layer, std::uint64_t seed, int num_layers) {
  SynthOptions o;
  o.num_layers = num_layers;
  o.num_heads = H;
  o.num_kv_heads = Hkv;
  o.head_dim = 16;
  o.hidden_size = 48;
  o.seq_len = 360;
  o.question_len = 16;
  o.gen_len = 24;
  o.window = 64;
  o.seed = seed;
  o.heavy_hitter_rate = 0.05;
  return synthetic_test_layer(o, layer);
}

std::unique_ptr<TestLayer> synthetic_test_layer(const SynthOptions& o, int layer) {
  auto t = std::make_unique<TestLayer>();
  t->meta = synth_meta(o);
  t->data = synth_layer(o, t->meta, layer);
  finish(*t);
  return t;
}

std::unique_ptr<TestLayer> trace_test_layer(const std::string& path, int layer) {
  TraceReader reader(path);
  auto t = std::make_unique<TestLayer>();
  t->meta = reader.meta();
  t->data = reader.read_layer(layer);
  finish(*t);
  return t;
}

namespace {

std::vector<double> softmax_prefix(const TestLayer& L, int h, i64 row, i64 t) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads;
  std::vector<double> p(t + 1);
  double mx = -INFINITY;
  for (i64 j = 0; j <= t; ++j) {
    double s = 0;
    for (int c = 0; c < d.head_dim; ++c)
      s += static_cast<double>(d.q[(h * d.num_q + row) * d.head_dim + c]) *
           static_cast<double>(d.k[((h / G) * d.seq_len + j) * d.head_dim + c]);
    p[j] = s * L.meta.attn_scale;
    mx = std::max(mx, p[j]);
  }
  double z = 0;
  for (auto& x : p) z += (x = std::exp(x - mx));
  for (auto& x : p) x /= z;
  return p;
}

i64 row_of(const TestLayer& L, i64 t) {
  for (i64 r = 0; r < static_cast<i64>(L.meta.q_pos.size()); ++r)
    if (L.meta.q_pos[r] == t) return r;
  throw std::runtime_error("test layer lacks query " + std::to_string(t));
}

std::vector<double> pool(const std::vector<double>& x, int k, bool max_pool) {
  const i64 m = static_cast<i64>(x.size()), r = k / 2;
  std::vector<double> y(m);
  for (i64 j = 0; j < m; ++j) {
    double acc = max_pool ? -INFINITY : 0.0;
    for (i64 i = j - r; i <= j + r; ++i) {
      if (i < 0 || i >= m) continue;  // avg: zero padding; max: -inf padding
      acc = max_pool ? std::max(acc, x[i]) : acc + x[i];
    }
    y[j] = max_pool ? acc : acc / k;
  }
  return y;
}

Mat reduce(const Mat& heads, int G, const std::string& op) {
  if (op == "query") return heads;
  Mat out(heads.size() / G, std::vector<double>(heads[0].size()));
  for (std::size_t u = 0; u < out.size(); ++u)
    for (std::size_t j = 0; j < out[u].size(); ++j) {
      double acc = op == "max" ? -INFINITY : 0.0;
      for (int g = 0; g < G; ++g) {
        const double v = heads[u * G + g][j];
        acc = op == "max" ? std::max(acc, v) : acc + v;
      }
      out[u][j] = op == "mean" ? acc / G : acc;
    }
  return out;
}

}  // namespace

Mat ref_snapkv(const TestLayer& L, const RefSnap& p) {
  const LayerData& d = L.data;
  const i64 m = L.n_c - p.window;
  const int G = d.num_heads / d.num_kv_heads;
  Mat att(d.num_heads, std::vector<double>(m, 0.0));
  for (int h = 0; h < d.num_heads; ++h) {
    for (i64 t = L.n_c - p.window; t < L.n_c; ++t) {
      const auto a = softmax_prefix(L, h, row_of(L, t), t);
      for (i64 j = 0; j < m; ++j) att[h][j] += p.mean ? a[j] / p.window : a[j];
    }
  }
  if (p.pool_first || p.gqa == "query") {
    for (auto& r : att) r = pool(r, p.kernel, p.max_pool);
    return reduce(att, G, p.gqa);
  }
  Mat red = reduce(att, G, p.gqa);
  for (auto& r : red) r = pool(r, p.kernel, p.max_pool);
  return red;
}

Mat ref_caote(const TestLayer& L, const Mat& prefix_scores, bool query_mode) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads, dh = d.head_dim;
  Mat out;
  for (std::size_t u = 0; u < prefix_scores.size(); ++u) {
    const int g = query_mode ? static_cast<int>(u) / G : static_cast<int>(u);
    const auto& a = prefix_scores[u];
    double total = 0;
    for (double x : a) total += x;
    std::vector<double> o(dh, 0.0), s(a.size(), 0.0);
    for (std::size_t j = 0; j < a.size(); ++j)
      for (int c = 0; c < dh; ++c) o[c] += a[j] / total * d.v[(g * d.seq_len + static_cast<i64>(j)) * dh + c];
    for (std::size_t j = 0; j < a.size(); ++j) {
      const double w = a[j] / total;
      double sq = 0;
      for (int c = 0; c < dh; ++c) sq += std::pow(o[c] - d.v[(g * d.seq_len + static_cast<i64>(j)) * dh + c], 2);
      s[j] = w / (1 - w) * std::sqrt(sq);
    }
    out.push_back(s);
  }
  return out;
}

std::vector<double> ref_dropkv_row(const TestLayer& L, int h, i64 t, double eps) {
  const LayerData& d = L.data;
  const int g = h / (d.num_heads / d.num_kv_heads), dh = d.head_dim;
  auto v = [&](i64 j, int c) { return static_cast<double>(d.v[(g * d.seq_len + j) * dh + c]); };
  const auto p = softmax_prefix(L, h, row_of(L, t), t);
  std::vector<double> o(dh, 0.0), row(L.n_c, 0.0);
  for (i64 j = 0; j <= t; ++j)
    for (int c = 0; c < dh; ++c) o[c] += p[j] * v(j, c);
  for (i64 j = 0; j <= t; ++j) {
    double sq = 0;
    for (int c = 0; c < dh; ++c) sq += std::pow(v(j, c) - o[c], 2);
    const double r = p[j] / (1 - p[j] + eps);
    row[j] = r * r * sq;
  }
  return row;
}

Mat ref_dropkv(const TestLayer& L, i64 window, int kernel, double eps, const std::string& gqa) {
  // The PR's order: every token of [0, n_c) scored (window tokens by the window queries that see
  // them), the group reduced, the whole row average-pooled, then the prefix [0, n_c - window) kept.
  const LayerData& d = L.data;
  const i64 m = L.n_c - window;
  Mat per_head(d.num_heads, std::vector<double>(L.n_c, 0.0));
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 t = m; t < L.n_c; ++t) {
      const auto row = ref_dropkv_row(L, h, t, eps);
      for (i64 j = 0; j < L.n_c; ++j) per_head[h][j] += row[j];
    }
  Mat out = reduce(per_head, d.num_heads / d.num_kv_heads, gqa);
  for (auto& row : out) {
    row = pool(row, kernel, false);
    row.resize(static_cast<std::size_t>(m));
  }
  return out;
}

Mat ref_oracle(const TestLayer& L, const std::string& gqa) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads;
  Mat mass(d.num_heads, std::vector<double>(L.n_c, 0.0));
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 r : L.eval_rows) {
      const auto a = softmax_prefix(L, h, r, L.meta.q_pos[r]);
      for (i64 j = 0; j < L.n_c; ++j) mass[h][j] += a[j] / static_cast<double>(L.eval_rows.size());
    }
  return reduce(mass, G, gqa);
}

Mat ref_knorm(const TestLayer& L) {
  const LayerData& d = L.data;
  Mat s(d.num_kv_heads, std::vector<double>(L.n_c));
  for (int g = 0; g < d.num_kv_heads; ++g)
    for (i64 j = 0; j < L.n_c; ++j) {
      double q = 0;
      for (int c = 0; c < d.head_dim; ++c) q += std::pow(static_cast<double>(d.k[(g * d.seq_len + j) * d.head_dim + c]), 2);
      s[g][j] = -std::sqrt(q);
    }
  return s;
}

Mat ref_value_norms(const TestLayer& L, const std::string& kind, bool query_mode) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads, dh = d.head_dim, D = d.hidden_size, HD = d.num_heads * dh;
  Mat per_head(d.num_heads, std::vector<double>(L.n_c));
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 j = 0; j < L.n_c; ++j) {
      const float* v = d.v.data() + ((h / G) * d.seq_len + j) * dh;
      double acc = 0;
      for (int e = 0; e < D; ++e) {
        double y = 0, up = 0;
        for (int c = 0; c < dh; ++c) {
          const double w = d.o_proj[static_cast<i64>(e) * HD + h * dh + c];
          y += v[c] * w;
          up += std::abs(v[c] * w);
        }
        acc += kind == "l1" ? std::abs(y) : kind == "l2" ? y * y : up;
      }
      per_head[h][j] = kind == "l2" ? std::sqrt(acc) : acc;
    }
  return reduce(per_head, G, query_mode ? "query" : "mean");
}

std::vector<i64> ref_top(const std::vector<double>& x, i64 k, const std::vector<std::uint8_t>* exclude) {
  std::vector<i64> idx;
  for (i64 j = 0; j < static_cast<i64>(x.size()); ++j)
    if (!exclude || !(*exclude)[j]) idx.push_back(j);
  std::stable_sort(idx.begin(), idx.end(), [&](i64 a, i64 b) { return x[a] > x[b]; });
  idx.resize(std::min<i64>(k, static_cast<i64>(idx.size())));
  return idx;
}

Masks ref_keep_prefix(const Mat& s, i64 n, i64 w, const std::vector<i64>& counts) {
  Masks out(s.size(), std::vector<std::uint8_t>(n, 0));
  for (std::size_t u = 0; u < s.size(); ++u) {
    for (i64 j = n - w; j < n; ++j) out[u][j] = 1;
    for (i64 j : ref_top(s[u], counts[u] - w)) out[u][j] = 1;
  }
  return out;
}

std::vector<i64> ref_ada_counts(const Mat& s, i64 w, i64 B, double alpha, bool variant_a, bool normalize,
                                bool window_in_floor) {
  const int U = static_cast<int>(s.size());
  const i64 m = static_cast<i64>(s[0].size()), b = B - w;
  struct E {
    double v;
    int u;
    i64 j;
  };
  auto flat_counts = [&](const Mat& x, const std::vector<std::vector<std::uint8_t>>& forced, i64 slots) {
    std::vector<i64> c(U, 0);
    std::vector<E> rest;
    for (int u = 0; u < U; ++u)
      for (i64 j = 0; j < m; ++j) {
        if (forced[u][j]) ++c[u];
        else rest.push_back({x[u][j], u, j});
      }
    std::stable_sort(rest.begin(), rest.end(), [](const E& a, const E& b) { return a.v > b.v; });
    i64 left = slots;
    for (int u = 0; u < U; ++u) left -= c[u];
    for (i64 r = 0; r < std::min<i64>(left, static_cast<i64>(rest.size())); ++r) ++c[rest[r].u];
    return c;
  };
  std::vector<std::vector<std::uint8_t>> none(U, std::vector<std::uint8_t>(m, 0));
  std::vector<i64> c;
  if (variant_a) {
    Mat x = s;
    if (normalize)
      for (int u = 0; u < U; ++u) {
        double top = 0, all = 0;
        for (i64 j : ref_top(s[u], b)) top += s[u][j];
        for (double v : s[u]) all += v;
        // the rule scales fp32 scores by an fp32 ratio; the ranking is what matters here
        for (auto& v : x[u]) v *= top / all;
      }
    c = flat_counts(x, none, U * b);
    for (auto& n : c) n = static_cast<i64>(std::nearbyint((1 - alpha) * n + std::floor(alpha * b)));
  } else {
    const i64 n_safe = ref_n_safe(B, alpha);
    const i64 fl = std::min(std::min(b, m), window_in_floor ? std::max<i64>(0, n_safe - w) : n_safe);
    auto forced = none;
    for (int u = 0; u < U; ++u)
      for (i64 j : ref_top(s[u], fl)) forced[u][j] = 1;
    c = flat_counts(s, forced, U * b);
  }
  for (auto& n : c) n = std::min(n, m) + w;
  return c;
}

i64 ref_n_safe(i64 B, double alpha) {
  const i64 n = static_cast<i64>(std::floor(static_cast<double>(B) * alpha));
  return alpha > 0 ? std::max<i64>(1, n) : n;
}

Masks ref_critical(const Mat& s, const Mat& nu, i64 n, i64 w, const std::vector<i64>& counts,
                   const std::vector<i64>& stage1, double eps) {
  Masks out(s.size(), std::vector<std::uint8_t>(n, 0));
  const i64 m = n - w;
  for (std::size_t u = 0; u < s.size(); ++u) {
    auto& keep = out[u];
    for (i64 j = m; j < n; ++j) keep[j] = 1;
    const i64 k = counts[u];
    const i64 s1 = std::min(k - w, std::max<i64>(0, stage1[u] - w));
    std::vector<std::uint8_t> taken(m, 0);
    for (i64 j : ref_top(s[u], s1)) keep[j] = taken[j] = 1;
    std::vector<double> prod(m);
    // The stage-2 score is defined in fp32 like the reference press: where s << eps,
    // (s + eps) rounds to eps and equal value norms make genuine ties (lower position wins),
    // which a float64 product would break on noise.
    for (i64 j = 0; j < m; ++j)
      prod[j] = static_cast<float>(static_cast<float>(s[u][j]) + static_cast<float>(eps)) * static_cast<float>(nu[u][j]);
    for (i64 j : ref_top(prod, k - w - s1, &taken)) keep[j] = 1;
  }
  return out;
}

namespace {
// Float64 attention of every evaluation query: [h][eval index][0..t].
std::vector<std::vector<std::vector<double>>> eval_attention(const TestLayer& L) {
  std::vector<std::vector<std::vector<double>>> a(L.data.num_heads);
  for (int h = 0; h < L.data.num_heads; ++h)
    for (i64 r : L.eval_rows) a[h].push_back(softmax_prefix(L, h, r, L.meta.q_pos[r]));
  return a;
}

double objective(const TestLayer& L, const std::vector<std::vector<std::vector<double>>>& att, const Masks& kept,
                 bool query_mode) {
  const LayerData& d = L.data;
  const int G = d.num_heads / d.num_kv_heads, dh = d.head_dim, HD = d.num_heads * dh;
  double J = 0;
  for (std::size_t qi = 0; qi < L.eval_rows.size(); ++qi) {
    std::vector<double> delta(HD, 0.0);  // concatenated head perturbations
    for (int h = 0; h < d.num_heads; ++h) {
      const auto& a = att[h][qi];
      const auto& keep = kept[query_mode ? h : h / G];
      std::vector<double> full(dh, 0.0), part(dh, 0.0);
      double F = 0;
      for (std::size_t j = 0; j < a.size(); ++j) {
        const float* v = d.v.data() + ((h / G) * d.seq_len + static_cast<i64>(j)) * dh;
        const bool in = static_cast<i64>(j) >= L.n_c || keep[j];
        for (int c = 0; c < dh; ++c) {
          full[c] += a[j] * v[c];
          if (in) part[c] += a[j] * v[c];
        }
        if (in) F += a[j];
      }
      for (int c = 0; c < dh; ++c) delta[h * dh + c] = full[c] - part[c] / F;
    }
    if (d.o_proj.empty()) {
      for (double x : delta) J += x * x;
      continue;
    }
    for (int e = 0; e < d.hidden_size; ++e) {
      double y = 0;
      for (int k = 0; k < HD; ++k) y += delta[k] * static_cast<double>(d.o_proj[static_cast<i64>(e) * HD + k]);
      J += y * y;
    }
  }
  return J;
}
}  // namespace

double ref_layer_objective(const TestLayer& L, const Masks& kept, bool query_mode) {
  return objective(L, eval_attention(L), kept, query_mode);
}

Masks ref_greedy(const TestLayer& L, bool query_mode, bool per_head, i64 B) {
  const auto att = eval_attention(L);
  const int units = query_mode ? L.data.num_heads : L.data.num_kv_heads;
  Masks kept(units, std::vector<std::uint8_t>(L.n_c, 1));
  std::vector<i64> count(units, L.n_c);
  auto done = [&] {
    i64 total = 0;
    for (int u = 0; u < units; ++u) {
      if (per_head && count[u] > B) return false;
      total += count[u];
    }
    return per_head || total <= B * units;
  };
  while (!done()) {
    double best = INFINITY;
    int bu = -1;
    i64 bj = -1;
    for (int u = 0; u < units; ++u) {
      if (per_head && count[u] <= B) continue;
      for (i64 j = 0; j < L.n_c; ++j) {
        if (!kept[u][j]) continue;
        kept[u][j] = 0;
        const double J = objective(L, att, kept, query_mode);
        kept[u][j] = 1;
        // Ties: the later position (then the later unit) is evicted first.
        if (J < best || (J == best && (j > bj || (j == bj && u > bu)))) {
          best = J;
          bu = u;
          bj = j;
        }
      }
    }
    kept[bu][bj] = 0;
    --count[bu];
  }
  return kept;
}

namespace {
double sq_norm(const float* x, int d) {
  double s = 0;
  for (int c = 0; c < d; ++c) s += static_cast<double>(x[c]) * x[c];
  return s;
}
}  // namespace

Mat ref_lagkv(const TestLayer& L, i64 sink, i64 lag, bool cross) {
  const LayerData& d = L.data;
  const i64 n = L.n_c;
  const int dh = d.head_dim;
  Mat s(d.num_kv_heads, std::vector<double>(n, 1.0));  // sinks and tail: 1, above every rank
  for (int g = 0; g < d.num_kv_heads; ++g) {
    if (n < sink + 2 * lag) {
      for (i64 j = sink; j < n; ++j) s[g][j] = static_cast<double>(j - sink) / (n - sink);
      continue;
    }
    const i64 parts = (n - sink) / lag - 1;
    for (i64 p = 0; p < parts; ++p) {
      const i64 at = sink + p * lag;
      std::vector<double> combined(lag, 0.0);
      for (const auto* base : {d.k.data(), d.v.data()}) {
        auto row = [&](i64 pos) { return base + (g * d.seq_len + pos) * dh; };
        std::vector<double> spread(lag);
        for (i64 j = 0; j < lag; ++j) {
          std::vector<double> z(dh);
          double mean = 0;
          for (int c = 0; c < dh; ++c) {
            double lo = INFINITY, hi = -INFINITY;
            for (i64 r = 0; r < lag; ++r) {
              lo = std::min(lo, static_cast<double>(row(at + lag + r)[c]));
              hi = std::max(hi, static_cast<double>(row(at + lag + r)[c]));
            }
            z[c] = (row(at + j)[c] - lo) / (hi - lo);
            mean += z[c] / dh;
          }
          double var = 0;
          for (double x : z) var += (x - mean) * (x - mean);
          spread[j] = std::sqrt(var / (dh - 1));
        }
        const double top = *std::max_element(spread.begin(), spread.end());
        double total = 0;
        for (double& x : spread) total += (x = std::exp(x - top));
        for (i64 j = 0; j < lag; ++j) combined[j] += spread[j] / total / 2;
      }
      for (i64 j = 0; j < lag; ++j) {
        if (cross) {
          s[g][at + j] = combined[j];
          continue;
        }
        i64 rank = 0;  // tokens below it, ties to the lower position
        for (i64 k = 0; k < lag; ++k) rank += combined[k] < combined[j] || (combined[k] == combined[j] && k < j);
        s[g][at + j] = static_cast<double>(rank) / lag;
      }
    }
  }
  return s;
}

Mat ref_cur(const TestLayer& L, i64 sink, const std::string& type, i64 local) {
  const LayerData& d = L.data;
  const i64 n = L.n_c;
  Mat s(d.num_kv_heads, std::vector<double>(n));
  for (int g = 0; g < d.num_kv_heads; ++g) {
    std::vector<double> k2(n), v2(n);
    for (i64 j = 0; j < n; ++j) {
      k2[j] = sq_norm(d.k.data() + (g * d.seq_len + j) * d.head_dim, d.head_dim);
      v2[j] = sq_norm(d.v.data() + (g * d.seq_len + j) * d.head_dim, d.head_dim);
    }
    for (auto* x : {&k2, &v2})
      for (i64 b = 0; local > 0 && b < n; b += local) {
        double t = 0;
        for (i64 j = b; j < std::min(n, b + local); ++j) t += (*x)[j];
        for (i64 j = b; j < std::min(n, b + local); ++j) (*x)[j] /= t;
      }
    for (i64 j = 0; j < n; ++j)
      s[g][j] = j < sink ? NAN
                : type == "key" ? k2[j]
                : type == "value" ? v2[j]
                : type == "kv_avg" ? (k2[j] + v2[j]) / 2
                : k2[j] * v2[j];
  }
  return s;
}

Mat ref_noncausal(const TestLayer& L, i64 chunk) {
  const LayerData& d = L.data;
  const i64 n = L.n_c;
  const int G = d.num_heads / d.num_kv_heads, dh = d.head_dim;
  Mat per_head(d.num_heads, std::vector<double>(n, 0.0));
  std::vector<i64> rows(n);
  for (i64 t = 0; t < n; ++t) rows[t] = row_of(L, t);
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 c0 = 0; c0 < n; c0 += chunk) {
      const i64 valid = std::min(chunk, n - c0);
      for (i64 i = 0; i < chunk; ++i) {  // query rows, padded ones included
        std::vector<double> logit(chunk);
        for (i64 j = 0; j < chunk; ++j) {
          double x = 0;
          if (j >= valid)
            x = -1e-9;
          else if (i < valid)
            for (int e = 0; e < dh; ++e)
              x += static_cast<double>(d.q[(h * d.num_q + rows[c0 + i]) * dh + e]) *
                   d.k[((h / G) * d.seq_len + c0 + j) * dh + e];
          logit[j] = x;
        }
        const double top = *std::max_element(logit.begin(), logit.end());
        double z = 0;
        for (double& x : logit) z += (x = std::exp(x - top));
        for (i64 j = 0; j < valid; ++j) per_head[h][c0 + j] += logit[j] / z;
      }
    }
  Mat s(d.num_kv_heads, std::vector<double>(n));
  for (int g = 0; g < d.num_kv_heads; ++g) {
    std::vector<double> x(n);
    for (i64 j = 0; j < n; ++j) {
      double a = 0;
      for (int k = 0; k < G; ++k) a += per_head[g * G + k][j] / G;
      x[j] = a * std::sqrt(sq_norm(d.v.data() + (g * d.seq_len + j) * dh, dh));
    }
    for (i64 j = 0; j < n; ++j) s[g][j] = ((j > 0 ? x[j - 1] : 0.0) + x[j] + (j + 1 < n ? x[j + 1] : 0.0)) / 3;
  }
  return s;
}

Masks ref_keep_scored(const Mat& scores, i64 B) {
  Masks m(scores.size());
  for (std::size_t u = 0; u < scores.size(); ++u) {
    const auto& x = scores[u];
    m[u].assign(x.size(), 0);
    std::vector<std::uint8_t> prot(x.size(), 0);
    i64 n_prot = 0;
    for (std::size_t j = 0; j < x.size(); ++j)
      if (std::isnan(x[j])) prot[j] = 1, m[u][j] = 1, ++n_prot;
    for (i64 j : ref_top(x, B - n_prot, &prot)) m[u][j] = 1;
  }
  return m;
}

Mat ref_defensive_of(const TestLayer& L, const std::vector<i64>& queries, i64 m,
                     const std::function<std::vector<double>(int h, i64 t)>& row_of_query, int kernel,
                     const std::string& gqa, bool prior) {
  const LayerData& d = L.data;
  Mat worst(d.num_heads, std::vector<double>(m, 0.0));
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 t : queries) {
      const auto full = row_of_query(h, t);  // may end at the query (0 after it)
      std::vector<double> row(static_cast<std::size_t>(m), 0.0);
      std::copy_n(full.begin(), std::min<i64>(m, static_cast<i64>(full.size())), row.begin());
      double raw = 0, after = 0;
      for (double x : row) raw += x;
      const std::vector<double> pooled = pool(row, kernel, false);
      for (double x : pooled) after += x;
      for (i64 j = 0; j < m; ++j) worst[h][j] = std::max(worst[h][j], after > 0 ? pooled[j] * raw / after : 0.0);
    }
  Mat s = reduce(worst, d.num_heads / d.num_kv_heads, gqa);
  if (prior)
    for (auto& u : s) {
      double mean = 0;
      for (double x : u) mean += x / static_cast<double>(u.size());
      for (double& x : u) x = std::max(x, mean);
    }
  return s;
}

Mat ref_defensive(const TestLayer& L, i64 window, int kernel, const std::string& gqa, bool prior) {
  std::vector<i64> queries;
  for (i64 t = L.n_c - window; t < L.n_c; ++t) queries.push_back(t);
  return ref_defensive_of(
      L, queries, L.n_c - window, [&](int h, i64 t) { return softmax_prefix(L, h, row_of(L, t), t); }, kernel, gqa,
      prior);
}

std::vector<std::unique_ptr<TestLayer>> standard_test_layers(std::uint64_t seed, int trace_layer) {
  std::vector<std::unique_ptr<TestLayer>> out;
  out.push_back(synthetic_test_layer(4, 4, 1, seed));
  out.push_back(synthetic_test_layer(4, 2, 2, seed + 1));
  out.push_back(synthetic_test_layer(8, 2, 3, seed + 2));
  const std::string trace = source_dir() + "/traces/niah_stories260k.h5";
  if (std::filesystem::exists(trace)) out.push_back(trace_test_layer(trace, trace_layer));
  return out;
}

double worst_relative(const UnitScores& s, const Mat& ref) {
  double worst = 0;
  for (int u = 0; u < s.units; ++u) {
    double top = 0;
    for (double b : ref[u]) top = std::max(top, std::abs(b));
    for (std::size_t j = 0; j < ref[u].size(); ++j)
      if (std::abs(ref[u][j]) >= 1e-6 * top)
        worst = std::max(worst, std::abs(s.unit(u)[j] - ref[u][j]) / std::abs(ref[u][j]));
  }
  return worst;
}

std::vector<std::unique_ptr<TestLayer>> synthetic_model(int H, int Hkv, std::uint64_t seed) {
  SynthOptions o;
  o.num_layers = 4;
  o.num_heads = H;
  o.num_kv_heads = Hkv;
  o.head_dim = 16;
  o.hidden_size = 48;
  o.seq_len = 600;
  o.question_len = 16;
  o.gen_len = 24;
  o.all_queries = true;
  o.seed = seed;
  std::vector<std::unique_ptr<TestLayer>> out;
  for (int l = 0; l < o.num_layers; ++l) out.push_back(synthetic_test_layer(o, l));
  return out;
}

std::vector<std::vector<Selection>> planned_select(const std::string& spec,
                                                   const std::vector<std::unique_ptr<TestLayer>>& layers,
                                                   const std::vector<Budget>& budgets) {
  auto rule = make_rule(spec);
  auto planner = rule->layer_planner();
  if (!planner) throw std::runtime_error(spec + ": not a cross-layer rule");
  for (const auto& L : layers) planner->observe(L->input());
  const auto plan = planner->plan(budgets);
  std::vector<std::vector<Selection>> out(budgets.size());
  for (const auto& L : layers) {
    std::vector<std::vector<i64>> counts;
    for (const auto& per_budget : plan) counts.push_back(per_budget.at(L->data.layer));
    RuleInput in = L->input();
    in.planned = &counts;
    const auto sels = rule->select(in, budgets);
    for (std::size_t b = 0; b < budgets.size(); ++b) out[b].push_back(sels[b]);
  }
  return out;
}

std::vector<double> ref_softmax_prefix(const TestLayer& L, int h, i64 t) {
  return softmax_prefix(L, h, row_of(L, t), t);
}

Mat ref_inverse(const Mat& M) {
  const int n = static_cast<int>(M.size());
  Mat A(n, std::vector<double>(2 * n, 0.0));  // [M | I], reduced to [I | M^-1]
  for (int a = 0; a < n; ++a) {
    std::copy(M[a].begin(), M[a].end(), A[a].begin());
    A[a][n + a] = 1;
  }
  for (int p = 0; p < n; ++p) {
    int best = p;
    for (int r = p + 1; r < n; ++r)
      if (std::abs(A[r][p]) > std::abs(A[best][p])) best = r;
    std::swap(A[p], A[best]);
    const double piv = A[p][p];
    for (auto& x : A[p]) x /= piv;
    for (int r = 0; r < n; ++r)
      if (r != p) {
        const double f = A[r][p];
        for (int c = 0; c < 2 * n; ++c) A[r][c] -= f * A[p][c];
      }
  }
  Mat inv(n);
  for (int a = 0; a < n; ++a) inv[a].assign(A[a].begin() + n, A[a].end());
  return inv;
}

Mat ref_cap(const TestLayer& L, i64 sink, double tau, i64 n_future, double eps) {
  const LayerData& d = L.data;
  const i64 n = L.n_c, m = n - sink;
  const int G = d.num_heads / d.num_kv_heads, dh = d.head_dim;
  const Rope rope = Rope::from_meta(L.meta, d.layer);  // only its angles and pair layout
  Mat s(d.num_kv_heads, std::vector<double>(n, 0.0));
  for (int h = 0; h < d.num_heads; ++h) {
    const int g = h / G;
    std::vector<double> mu(dh, 0.0);
    for (i64 t = sink; t < n; ++t) {  // de-rotate: q_pre = R_t^T q
      const float* q = d.q.data() + (h * d.num_q + row_of(L, t)) * dh;
      std::vector<double> pre(q, q + dh);
      for (int i = 0; i < rope.pairs(); ++i) {
        const double th = rope.angle(i, t), qa = q[rope.a(i)], qb = q[rope.b(i)];
        pre[rope.a(i)] = qa * std::cos(th) + qb * std::sin(th);
        pre[rope.b(i)] = -qa * std::sin(th) + qb * std::cos(th);
      }
      for (int c = 0; c < dh; ++c) mu[c] += pre[c] / static_cast<double>(m);
    }
    std::vector<double> anchor = mu;
    for (int i = 0; i < rope.pairs(); ++i) {
      double c = 0, sn = 0;
      for (i64 t = n; t < n + n_future; ++t) {
        c += std::cos(rope.angle(i, t)) / static_cast<double>(n_future);
        sn += std::sin(rope.angle(i, t)) / static_cast<double>(n_future);
      }
      anchor[rope.a(i)] = c * mu[rope.a(i)] - sn * mu[rope.b(i)];
      anchor[rope.b(i)] = sn * mu[rope.a(i)] + c * mu[rope.b(i)];
    }
    const double an = std::sqrt(std::inner_product(anchor.begin(), anchor.end(), anchor.begin(), 0.0));
    std::vector<double> w(n, 0.0);
    double top = -INFINITY;
    for (i64 j = sink; j < n; ++j) {
      const float* k = d.k.data() + (g * d.seq_len + j) * dh;
      double dot = 0;
      for (int c = 0; c < dh; ++c) dot += anchor[c] * k[c];
      w[j] = tau * std::clamp(dot / (an * std::sqrt(sq_norm(k, dh))), -1.0, 1.0);
      top = std::max(top, w[j]);
    }
    // A = I + sum (w + eps) v v^T, inverted by Gauss-Jordan.
    Mat A(dh, std::vector<double>(dh, 0.0));
    for (int a = 0; a < dh; ++a) A[a][a] = 1;
    for (i64 j = sink; j < n; ++j) {
      w[j] = std::exp(w[j] - top);
      const float* v = d.v.data() + (g * d.seq_len + j) * dh;
      for (int a = 0; a < dh; ++a)
        for (int b = 0; b < dh; ++b) A[a][b] += (w[j] + eps) * v[a] * v[b];
    }
    const Mat inv = ref_inverse(A);
    for (i64 j = sink; j < n; ++j) {
      const float* v = d.v.data() + (g * d.seq_len + j) * dh;
      double lev = 0;
      for (int a = 0; a < dh; ++a)
        for (int b = 0; b < dh; ++b) lev += v[a] * inv[a][b] * v[b];
      s[g][j] += w[j] * lev / G;
    }
  }
  for (auto& row : s)
    for (i64 j = 0; j < sink; ++j) row[j] = NAN;
  return s;
}

}  // namespace kvsim::test
