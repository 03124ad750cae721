// duo: DuoAttention (Xiao et al. 2024, arXiv 2410.10819; kvpress DuoAttentionPress with
// on_the_fly_scoring), rules doc 2.31. Heads are retrieval heads (keep the whole span) or
// streaming heads (keep the first `sink` and the last `recent` tokens); the heads of every layer
// of the run are ranked together by kvpress's on-the-fly score and the lowest become streaming.
// Head score (per KV head, the mean over its query heads): from the mean pre-RoPE query of the
// head and mean pre-RoPE key of its KV head over the span, placed at positions 0..q_len-1 with
// RoPE, the last position's softmax over the q_len keys (logits / sqrt(head_dim)), and the mean of
// its cumulative sum: high when attention reaches far back. kvpress averages these statistics over
// 50 BookSum chapters it downloads; a replay has only the trace, so they come from the trace's
// own prompt (every query of the span is needed).
// Budget: `ratio` >= 0 is kvpress's head_compression_ratio (the share of streaming heads; the
// budget is then not used and the kept tokens say what it cost); by default the number of
// streaming heads is the one whose kept tokens come nearest the budget's, over the whole run.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "rules/h2o_common.h"
#include "rules/registry.h"
#include "rules/rope.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

struct DuoParams {
  i64 sink = 128, recent = 256, q_len = 500;
  double ratio = -1;
};

// kvpress's on-the-fly DuoAttention score of every KV head of one layer.
std::vector<double> duo_head_scores(const RuleInput& in, const DuoParams& p, const std::string& spec) {
  const LayerData& d = *in.data;
  const i64 n = in.n_c;
  if (n <= 0) fail(spec, "n_c", "empty span");
  const Rope rope = Rope::from_meta(*in.meta, in.layer);
  const auto rows = rules_more::require_q_rows(*in.meta, 0, n, "duo", "its head scores average every prompt query");
  const int H = d.num_heads, G = H / d.num_kv_heads, dim = d.head_dim;
  auto mean_pre = [&](int g, auto row_of) {  // mean over the span of the de-rotated rows of KV head g
    std::vector<double> mean(dim, 0.0);
    std::vector<float> pre(dim);
    for (i64 t = 0; t < n; ++t) {
      rope.derotate(row_of(t), in.rope_position(g, t), pre.data());
      for (int c = 0; c < dim; ++c) mean[c] += pre[c];
    }
    std::vector<float> out(dim);
    for (int c = 0; c < dim; ++c) out[c] = static_cast<float>(mean[c] / static_cast<double>(n));
    return out;
  };
  std::vector<double> score(d.num_kv_heads, 0.0);
#pragma omp parallel for schedule(dynamic)
  for (int g = 0; g < d.num_kv_heads; ++g) {
    const std::vector<float> kbar = mean_pre(g, [&](i64 t) { return d.k_row(g, t); });
    std::vector<std::vector<float>> keys(p.q_len, std::vector<float>(dim));
    for (i64 j = 0; j < p.q_len; ++j) rope.rotate(kbar.data(), j, keys[j].data());
    for (int h = g * G; h < (g + 1) * G; ++h) {
      const std::vector<float> qbar = mean_pre(g, [&](i64 t) { return d.q_row(h, rows[t]); });
      std::vector<float> q(dim);
      rope.rotate(qbar.data(), p.q_len - 1, q.data());
      std::vector<double> logit(p.q_len);
      double top = -INFINITY;
      for (i64 j = 0; j < p.q_len; ++j) {
        double x = 0;
        for (int c = 0; c < dim; ++c) x += static_cast<double>(q[c]) * keys[j][c];
        logit[j] = x / std::sqrt(static_cast<double>(dim));
        top = std::max(top, logit[j]);
      }
      double z = 0;
      for (double& x : logit) z += (x = std::exp(x - top));
      double cum = 0, area = 0;  // mean of the cumulative attention
      for (double x : logit) area += (cum += x / z);
      score[g] += area / static_cast<double>(p.q_len) / G;
    }
  }
  return score;
}

// Tokens a streaming head keeps of a span of n (kvpress masks [sink, n - recent) only when the
// span is longer than both).
i64 streaming_kept(const DuoParams& p, i64 n) { return n > p.sink + p.recent ? p.sink + p.recent : n; }

class DuoPlanner : public LayerPlanner {
 public:
  explicit DuoPlanner(DuoParams p, std::string spec) : p_(p), spec_(std::move(spec)) {}
  void observe(const RuleInput& in) override {
    n_c_ = in.n_c;
    scores_[in.layer] = duo_head_scores(in, p_, spec_);
  }
  std::vector<std::map<int, std::vector<i64>>> plan(const std::vector<Budget>& budgets) const override {
    std::vector<std::pair<int, int>> heads;  // (layer, KV head), flat in layer order
    std::vector<double> flat;
    for (const auto& [layer, s] : scores_)
      for (std::size_t g = 0; g < s.size(); ++g) {
        heads.push_back({layer, static_cast<int>(g)});
        flat.push_back(s[g]);
      }
    const i64 N = static_cast<i64>(flat.size()), ks = streaming_kept(p_, n_c_);
    std::vector<i64> order(N);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return flat[a] < flat[b]; });
    std::vector<std::map<int, std::vector<i64>>> out;
    for (const Budget& b : budgets) {
      i64 streaming = 0;
      if (p_.ratio >= 0) {
        streaming = static_cast<i64>(std::nearbyint(static_cast<double>(N) * p_.ratio));  // Python's round
      } else if (ks < n_c_) {
        double target = 0;  // the budget's kept tokens over the run's heads
        for (const auto& [layer, s] : scores_)
          target += static_cast<double>(s.size()) * static_cast<double>(b.for_layer(layer).tokens_for(n_c_));
        streaming = std::llround((static_cast<double>(N * n_c_) - target) / static_cast<double>(n_c_ - ks));
      }
      streaming = std::clamp<i64>(streaming, 0, N);
      std::map<int, std::vector<i64>> plan;
      for (const auto& [layer, s] : scores_) plan[layer].assign(s.size(), n_c_);
      for (i64 k = 0; k < streaming; ++k) plan[heads[order[k]].first][heads[order[k]].second] = ks;
      out.push_back(std::move(plan));
    }
    return out;
  }

 private:
  DuoParams p_;
  std::string spec_;
  i64 n_c_ = 0;
  std::map<int, std::vector<double>> scores_;
};

class DuoRule : public Rule {
 public:
  DuoRule(std::string spec, DuoParams p) : spec_(std::move(spec)), p_(p) {}
  std::string spec() const override { return spec_; }
  std::unique_ptr<LayerPlanner> layer_planner() const override { return std::make_unique<DuoPlanner>(p_, spec_); }
  // DuoAttention's head kinds are fixed: a full head keeps everything it holds at every cut, a
  // streaming head its sink and recent tokens.
  std::vector<i64> decode_counts(const std::vector<i64>& planned, i64 n0, i64, i64,
                                 const std::vector<i64>& held) const override {
    std::vector<i64> out(planned.size());
    for (std::size_t u = 0; u < planned.size(); ++u) {
      const i64 h = held[u < held.size() ? u : 0];
      out[u] = planned[u] >= n0 ? h : std::min(h - 1, p_.sink + p_.recent);
    }
    return out;
  }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    const auto& planned = require_plan(in, spec_, budgets.size());
    const LayerData& d = *in.data;
    const i64 n = in.n_c;
    std::vector<Selection> out;
    for (const auto& counts : planned) {
      Selection s(GqaMode::kv, d.num_kv_heads, n);
      for (int g = 0; g < d.num_kv_heads; ++g) {
        std::uint8_t* m = s.unit_mask(g);
        const bool streaming = counts.at(g) < n;
        for (i64 j = 0; j < n; ++j) m[j] = !streaming || j < p_.sink || j >= n - p_.recent;
      }
      s.budget_tokens = std::llround(std::accumulate(counts.begin(), counts.end(), 0.0) /
                                     static_cast<double>(counts.size()));
      out.push_back(std::move(s));
    }
    return out;
  }

 private:
  std::string spec_;
  DuoParams p_;
};

RuleInfo duo_info() {
  return {"duo",
          "DuoAttention (kvpress DuoAttentionPress, on-the-fly head scores from the trace's own prompt): the "
          "lowest-scoring heads of the whole run keep only sink + recent tokens, the others everything",
          {{"sink", "int", "128", "first tokens a streaming head keeps"},
           {"recent", "int", "256", "last tokens of the span a streaming head keeps"},
           {"q_len", "int", "500", "positions of the synthetic mean query/key sequence that scores a head"},
           {"ratio", "double", "-1",
            "share of streaming heads (kvpress head_compression_ratio); -1: as many as brings the kept tokens "
            "nearest the budget's"}},
          /*in_all=*/false};  // needs every prompt query
}

std::unique_ptr<Rule> build_duo(SpecReader& r) {
  DuoParams p;
  p.sink = r.get_int("sink", 128, 0, 1LL << 40);
  p.recent = r.get_int("recent", 256, 0, 1LL << 40);
  p.q_len = r.get_int("q_len", 500, 1, 1LL << 20);
  p.ratio = r.get_double("ratio", -1, -1, 1);
  if (p.ratio < 0 && p.ratio != -1) fail(r.canonical(), "ratio", "must be in [0, 1], or -1 (matched to the budget)");
  return std::make_unique<DuoRule>(r.canonical(), p);
}

KVSIM_RULE(duo_info(), build_duo);

}  // namespace
}  // namespace kvsim
