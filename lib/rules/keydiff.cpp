#include "rules/keydiff.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>

#include "kernels/kernels.h"
#include "rules/h2o_common.h"
#include "rules/registry.h"

namespace kvsim {
namespace {

// The anchor direction mu / |mu| from the anchor sum (the 1/m of the mean cancels in the cosine);
// returns |mu|.
double unit_anchor(const std::vector<double>& mu, avec<float>& unit_mu) {
  double mu_norm = 0;
  for (double x : mu) mu_norm += x * x;
  mu_norm = std::sqrt(mu_norm);
  for (std::size_t c = 0; c < mu.size(); ++c) unit_mu[c] = mu_norm > 0 ? static_cast<float>(mu[c] / mu_norm) : 0.0f;
  return mu_norm;
}

// mu += sign * w_j k_j (w_j = 1/|k_j| for anchor=unit, 1 for raw), in float64.
void add_to_anchor(std::vector<double>& mu, const float* k, double w) {
  for (std::size_t c = 0; c < mu.size(); ++c) mu[c] += w * k[c];
}

double anchor_weight(KeyDiffAnchor anchor, const float* inv_norm, i64 j) {
  return anchor == KeyDiffAnchor::unit ? inv_norm[j] : 1.0;
}

// score_i = -cos(k_pos[i], mu) with precomputed inverse key norms (0 for a zero key).
void scores_against(const float* keys, int d, const float* inv_norm, const i64* pos, i64 m,
                    const avec<float>& unit_mu, float* out) {
  for (i64 i = 0; i < m; ++i) out[i] = -kernels::dot(keys + pos[i] * d, unit_mu.data(), d) * inv_norm[pos[i]];
}

// -cos(k, mu) in float64 (mu: the float64 anchor sum, mu_norm its norm); 0 for a zero key or anchor.
double score_float64(const float* k, int d, const std::vector<double>& mu, double mu_norm) {
  double km = 0, kk = 0;
  for (int c = 0; c < d; ++c) {
    km += static_cast<double>(k[c]) * mu[c];
    kk += static_cast<double>(k[c]) * k[c];
  }
  return kk > 0 && mu_norm > 0 ? -km / (std::sqrt(kk) * mu_norm) : 0.0;
}

// Keeps the top N of the m candidates as float64 scores would rank them (ties: lower index).
// float32 cosines carry an error up to ~(2d + 8) 2^-24; at 32K tokens the N-th and (N+1)-th
// scores of a block step are often closer than that (1e-8 apart), and one misordered pair
// changes every later anchor. Scores farther than twice the bound from the float32 N-th score are
// on the right side whatever the rounding; only the few inside that band are re-scored in float64.
void keep_top_float64_boundary(const float* keys, int d, const i64* cand, i64 m, i64 N,
                               const std::vector<double>& mu, double mu_norm, const float* score,
                               std::uint8_t* keep) {
  std::fill(keep, keep + m, std::uint8_t{N >= m});
  if (N >= m || N <= 0) return;
  std::vector<float> sorted(score, score + m);
  std::nth_element(sorted.begin(), sorted.begin() + (N - 1), sorted.end(), std::greater<float>());
  const double t = sorted[static_cast<std::size_t>(N - 1)];
  const double band = 2.0 * (2.0 * d + 8.0) * std::ldexp(1.0, -24);
  i64 kept = 0;
  std::vector<std::pair<double, i64>> near;  // (float64 score, candidate index)
  for (i64 i = 0; i < m; ++i) {
    if (score[i] > t + band) {
      keep[i] = 1;
      ++kept;
    } else if (score[i] >= t - band) {
      near.emplace_back(score_float64(keys + cand[i] * d, d, mu, mu_norm), i);
    }
  }
  std::sort(near.begin(), near.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (std::size_t r = 0; r < near.size() && kept < N; ++r, ++kept) keep[near[r].second] = 1;
}

std::vector<float> inverse_norms(const float* keys, int d, i64 n) {
  std::vector<float> inv(static_cast<std::size_t>(n));
  for (i64 j = 0; j < n; ++j) {
    const float nn = std::sqrt(kernels::dot(keys + j * d, keys + j * d, d));
    inv[j] = nn > 0 ? 1.0f / nn : 0.0f;
  }
  return inv;
}

}  // namespace

void keydiff_scores(const float* keys, int d, const i64* pos, i64 m, KeyDiffAnchor anchor, float* out) {
  const i64 n = m > 0 ? *std::max_element(pos, pos + m) + 1 : 0;
  const std::vector<float> inv = inverse_norms(keys, d, n);
  std::vector<double> mu(static_cast<std::size_t>(d), 0.0);
  for (i64 i = 0; i < m; ++i) add_to_anchor(mu, keys + pos[i] * d, anchor_weight(anchor, inv.data(), pos[i]));
  avec<float> unit_mu(static_cast<std::size_t>(d));
  unit_anchor(mu, unit_mu);
  scores_against(keys, d, inv.data(), pos, m, unit_mu, out);
}

// The block process keeps the anchor sum of the cache up to date instead of recomputing it over
// all candidates at every block: + the new block, - what the block step evicted, O(block * d)
// per step (float64, so the running sum stays within ~1e-15 of a fresh one). The scores of the
// N + block candidates still cost O((N + block) d) per step: the anchor moved, every cosine did.
std::vector<i64> keydiff_select(const float* keys, int d, i64 n, i64 N, i64 block, KeyDiffAnchor anchor) {
  if (N <= 0 || n <= 0) return {};
  std::vector<i64> cache(static_cast<std::size_t>(std::min(N, n)));
  std::iota(cache.begin(), cache.end(), 0);
  if (N >= n) return cache;
  const std::vector<float> inv = inverse_norms(keys, d, n);
  const i64 bs = block <= 0 ? n - N : block;
  std::vector<double> mu(static_cast<std::size_t>(d), 0.0);
  for (i64 j : cache) add_to_anchor(mu, keys + j * d, anchor_weight(anchor, inv.data(), j));
  avec<float> unit_mu(static_cast<std::size_t>(d));
  std::vector<float> score;
  std::vector<std::uint8_t> keep;
  std::vector<i64> cand;
  cand.reserve(static_cast<std::size_t>(N + bs));
  for (i64 s = N; s < n; s += bs) {
    cand = cache;
    for (i64 j = s; j < std::min(n, s + bs); ++j) {
      cand.push_back(j);
      add_to_anchor(mu, keys + j * d, anchor_weight(anchor, inv.data(), j));
    }
    const i64 m = static_cast<i64>(cand.size());
    score.resize(static_cast<std::size_t>(m));
    const double mu_norm = unit_anchor(mu, unit_mu);
    scores_against(keys, d, inv.data(), cand.data(), m, unit_mu, score.data());
    keep.resize(static_cast<std::size_t>(m));
    keep_top_float64_boundary(keys, d, cand.data(), m, N, mu, mu_norm, score.data(), keep.data());  // cand is sorted
    cache.clear();
    for (i64 i = 0; i < m; ++i) {
      if (keep[i])
        cache.push_back(cand[i]);
      else
        add_to_anchor(mu, keys + cand[i] * d, -anchor_weight(anchor, inv.data(), cand[i]));
    }
  }
  return cache;
}

namespace {

class KeyDiffRule : public Rule {
 public:
  KeyDiffRule(std::string spec, i64 block, KeyDiffAnchor anchor, double recent)
      : spec_(std::move(spec)), block_(block), anchor_(anchor), recent_(recent) {}
  std::string spec() const override { return spec_; }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    rules_more::check_input(in, "keydiff");
    const LayerData& D = *in.data;
    const i64 n_c = in.n_c;
    std::vector<Selection> out;
    for (std::size_t b = 0; b < budgets.size(); ++b) out.emplace_back(GqaMode::kv, D.num_kv_heads, n_c);
    std::vector<i64> N(budgets.size());
    for (std::size_t b = 0; b < budgets.size(); ++b) N[b] = budgets[b].tokens_for(n_c);
#pragma omp parallel for schedule(dynamic) collapse(2)
    for (int g = 0; g < D.num_kv_heads; ++g)
      for (std::size_t b = 0; b < budgets.size(); ++b) {
        const i64 rec = static_cast<i64>(recent_ * static_cast<double>(N[b]) + 1e-9);
        const i64 older = n_c - rec;
        std::uint8_t* mask = out[b].unit_mask(g);
        for (i64 j : keydiff_select(D.k_head(g), D.head_dim, older, N[b] - rec, block_, anchor_)) mask[j] = 1;
        for (i64 j = older; j < n_c; ++j) mask[j] = 1;
      }
    return out;
  }

 private:
  std::string spec_;
  i64 block_;
  KeyDiffAnchor anchor_;
  double recent_;
};

RuleInfo keydiff_info() {
  return {"keydiff",
          "KeyDiff: keep the keys least similar (cosine) to the mean key direction; block-wise under a fixed "
          "budget; per KV head, keys only",
          {{"block", "int", "128", "prompt block size of the BlockPress process; 0 = one shot over the whole span"},
           {"anchor", "choice unit|raw", "unit", "anchor: mean of unit-normalised keys, or the plain mean key"},
           {"recent", "double", "0", "share of the budget reserved for the newest prompt tokens"}}};
}

std::unique_ptr<Rule> build_keydiff(SpecReader& r) {
  const i64 block = r.get_int("block", 128, 0, 1LL << 40);
  const std::string anchor = r.get_choice("anchor", "unit", {"unit", "raw"});
  const double recent = r.get_double("recent", 0.0, 0.0, 1.0);
  return std::make_unique<KeyDiffRule>(r.canonical(), block, anchor == "raw" ? KeyDiffAnchor::raw : KeyDiffAnchor::unit,
                                       recent);
}

KVSIM_RULE(keydiff_info(), build_keydiff);

}  // namespace
}  // namespace kvsim
