#include "report/key_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kernels/kernels.h"
#include "report/rank_stats.h"

namespace kvsim::report {

namespace {

// Indices of the n largest values, ties to the lower index.
std::vector<i64> top_indices(const std::vector<double>& v, i64 n) {
  std::vector<i64> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  n = std::min<i64>(n, static_cast<i64>(v.size()));
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), [&](i64 a, i64 b) {
    return v[static_cast<std::size_t>(a)] > v[static_cast<std::size_t>(b)] ||
           (v[static_cast<std::size_t>(a)] == v[static_cast<std::size_t>(b)] && a < b);
  });
  idx.resize(static_cast<std::size_t>(n));
  return idx;
}

}  // namespace

std::vector<TopN> parse_top_list(const std::string& text, i64 n_c) {
  std::vector<TopN> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    if (item.empty() || end != item.c_str() + item.size() || !(v > 0))
      fail("--top", item, "expected a positive token count or a fraction in (0, 1)");
    TopN t;
    t.text = item;
    if (v < 1) {
      t.tokens = static_cast<i64>(std::floor(v * static_cast<double>(n_c)));
    } else {
      if (v != std::floor(v)) fail("--top", item, "token counts must be whole numbers");
      t.tokens = static_cast<i64>(v);
    }
    t.tokens = std::clamp<i64>(t.tokens, 1, std::max<i64>(1, n_c));
    out.push_back(t);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::vector<double> keydiff_scores(const float* keys, i64 n_c, int head_dim) {
  std::vector<double> unit(static_cast<std::size_t>(n_c * head_dim), 0.0), mu(static_cast<std::size_t>(head_dim), 0.0);
  for (i64 j = 0; j < n_c; ++j) {
    double norm = 0;
    for (int c = 0; c < head_dim; ++c) norm += static_cast<double>(keys[j * head_dim + c]) * keys[j * head_dim + c];
    norm = std::sqrt(norm);
    if (norm == 0) continue;  // a zero key has no direction; it scores 0 below
    for (int c = 0; c < head_dim; ++c) {
      const double u = keys[j * head_dim + c] / norm;
      unit[static_cast<std::size_t>(j * head_dim + c)] = u;
      mu[static_cast<std::size_t>(c)] += u / static_cast<double>(n_c);
    }
  }
  double mu_norm = 0;
  for (double m : mu) mu_norm += m * m;
  mu_norm = std::sqrt(mu_norm);
  std::vector<double> score(static_cast<std::size_t>(n_c), 0.0);
  if (mu_norm == 0) return score;
  for (i64 j = 0; j < n_c; ++j) {
    double d = 0;
    for (int c = 0; c < head_dim; ++c) d += unit[static_cast<std::size_t>(j * head_dim + c)] * mu[static_cast<std::size_t>(c)];
    score[static_cast<std::size_t>(j)] = -d / mu_norm;
  }
  return score;
}

std::vector<HeadKeyStats> key_stats_for_layer(const LayerData& layer, const std::vector<i64>& q_pos,
                                              const KeyStatsOptions& opt) {
  const std::string where = "layer " + std::to_string(layer.layer);
  if (static_cast<i64>(q_pos.size()) != layer.num_q) fail(where, "q_pos", "does not match the loaded query rows");
  if (opt.n_c < 1 || opt.n_c > layer.seq_len) fail(where, "n_c", "compression point outside [1, seq_len]");
  const int d = layer.head_dim, group = layer.num_heads / layer.num_kv_heads;
  const i64 n_c = opt.n_c;

  struct EvalSet {
    std::string name;
    std::vector<i64> rows;
  };
  std::vector<EvalSet> sets = {{"queries", {}}, {"window", {}}};
  for (i64 r = 0; r < layer.num_q; ++r) {
    const i64 p = q_pos[static_cast<std::size_t>(r)];
    if (p >= layer.seq_len) fail(where, "q_pos", "position " + std::to_string(p) + " beyond seq_len");
    if (p >= n_c) sets[0].rows.push_back(r);
    else if (p >= n_c - opt.window) sets[1].rows.push_back(r);
  }

  std::vector<std::vector<double>> scores(static_cast<std::size_t>(layer.num_kv_heads));
  for (int g = 0; g < layer.num_kv_heads; ++g) scores[static_cast<std::size_t>(g)] = keydiff_scores(layer.k_head(g), n_c, d);

  std::vector<HeadKeyStats> out;
  for (const auto& set : sets) {
    const i64 m = static_cast<i64>(set.rows.size());
    if (m == 0) continue;
    i64 max_len = 0;
    for (i64 r : set.rows) max_len = std::max(max_len, q_pos[static_cast<std::size_t>(r)] + 1);
    avec<float> qs(static_cast<std::size_t>(m * d)), logits(static_cast<std::size_t>(m * max_len));
    for (int h = 0; h < layer.num_heads; ++h) {
      const int g = h / group;
      for (i64 i = 0; i < m; ++i)
        std::copy_n(layer.q_row(h, set.rows[static_cast<std::size_t>(i)]), d, qs.data() + i * d);
      kernels::sgemm(false, true, m, max_len, d, 1.0f, qs.data(), d, layer.k_head(g), d, 0.0f, logits.data(), max_len);

      HeadKeyStats s;
      s.layer = layer.layer;
      s.head = h;
      s.kv_head = g;
      s.eval = set.name;
      s.n_queries = m;
      s.n_keys = n_c;
      std::vector<double> mean_attn(static_cast<std::size_t>(n_c), 0.0), p(static_cast<std::size_t>(n_c));
      for (i64 i = 0; i < m; ++i) {
        float* row = logits.data() + i * max_len;
        const i64 len = q_pos[static_cast<std::size_t>(set.rows[static_cast<std::size_t>(i)])] + 1;  // causal
        kernels::logit_softmax_inplace(row, len, {static_cast<float>(opt.attn_scale), static_cast<float>(opt.attn_softcap)});
        const i64 span = std::min(len, n_c);
        double mass = 0;
        for (i64 j = 0; j < span; ++j) {
          mean_attn[static_cast<std::size_t>(j)] += row[j] / static_cast<double>(m);
          mass += row[j];
        }
        s.span_mass += mass / static_cast<double>(m);
        // Concentration of this query's span attention (renormalised over the span).
        if (mass <= 0) continue;
        for (i64 j = 0; j < n_c; ++j) p[static_cast<std::size_t>(j)] = j < span ? row[j] / mass : 0.0;
        double entropy = 0;
        for (double x : p)
          if (x > 0) entropy -= x * std::log(x);
        std::sort(p.begin(), p.end(), std::greater<>());
        double cum = 0;
        i64 k = 0;
        while (k < n_c && cum < 0.9 * (1 - 1e-12)) cum += p[static_cast<std::size_t>(k++)];
        s.mass_frac_90 += static_cast<double>(k) / static_cast<double>(n_c) / static_cast<double>(m);
        s.entropy += entropy / static_cast<double>(m);
      }
      s.entropy_norm = n_c > 1 ? s.entropy / std::log(static_cast<double>(n_c)) : 0.0;
      const auto& sc = scores[static_cast<std::size_t>(g)];
      s.spearman = spearman(sc, mean_attn);
      for (const auto& t : opt.top) {
        const auto a = top_indices(mean_attn, t.tokens), b = top_indices(sc, t.tokens);
        std::vector<char> in_b(static_cast<std::size_t>(n_c), 0);
        for (i64 j : b) in_b[static_cast<std::size_t>(j)] = 1;
        i64 hit = 0;
        for (i64 j : a) hit += in_b[static_cast<std::size_t>(j)];
        s.recall.push_back(static_cast<double>(hit) / static_cast<double>(t.tokens));
      }
      out.push_back(std::move(s));
    }
  }
  return out;
}

}  // namespace kvsim::report
