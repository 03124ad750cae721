#include "rules/think.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "rules/h2o_common.h"
#include "rules/registry.h"

namespace kvsim {

std::vector<double> think_channel_scores(const std::vector<double>& q_sq, const float* keys, int d,
                                         const std::vector<i64>& kept_pos) {
  std::vector<double> k_sq(static_cast<std::size_t>(d), 0.0);
  for (i64 j : kept_pos)
    for (int c = 0; c < d; ++c) k_sq[c] += static_cast<double>(keys[j * d + c]) * keys[j * d + c];
  std::vector<double> score(static_cast<std::size_t>(d));
  const double m = kept_pos.empty() ? 1.0 : static_cast<double>(kept_pos.size());
  for (int c = 0; c < d; ++c) score[c] = q_sq[c] * (k_sq[c] / m);
  return score;
}

std::vector<std::uint8_t> think_channel_mask(const std::vector<double>& score, double ratio) {
  const int d = static_cast<int>(score.size());
  const int n_pruned = static_cast<int>(std::floor(d * ratio + 1e-9));
  std::vector<int> order(static_cast<std::size_t>(d));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return score[a] < score[b]; });
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(d), 1);
  for (int i = 0; i < n_pruned; ++i) keep[order[i]] = 0;
  return keep;
}

namespace {

class ThinkRule : public Rule {
 public:
  ThinkRule(std::string spec, std::unique_ptr<Rule> base, double ratio, i64 window)
      : spec_(std::move(spec)), base_(std::move(base)), ratio_(ratio), window_(window) {}
  std::string spec() const override { return spec_; }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    rules_more::check_input(in, "think");
    const LayerData& D = *in.data;
    const int d = D.head_dim, G = D.num_heads / D.num_kv_heads;
    const i64 w = std::min(window_, in.n_c);
    const auto rows = rules_more::require_q_rows(*in.meta, in.n_c - w, in.n_c, "think",
                                                 "its channel scores use the last window prompt queries");
    // Group mean of the per-head mean squared query channels.
    std::vector<std::vector<double>> q_sq(static_cast<std::size_t>(D.num_kv_heads),
                                          std::vector<double>(static_cast<std::size_t>(d), 0.0));
    for (int h = 0; h < D.num_heads; ++h)
      for (i64 r : rows) {
        const float* q = D.q_row(h, r);
        for (int c = 0; c < d; ++c) q_sq[h / G][c] += static_cast<double>(q[c]) * q[c] / (static_cast<double>(w) * G);
      }
    std::vector<Selection> sels = base_->select(in, budgets);
    for (Selection& s : sels) {
      s.key_channels.assign(static_cast<std::size_t>(D.num_kv_heads * d), 1);
      for (int g = 0; g < D.num_kv_heads; ++g) {
        std::vector<i64> kept;
        for (i64 j = 0; j < in.n_c; ++j) {
          bool k = false;
          if (s.mode == GqaMode::kv) k = s.unit_mask(g)[j] != 0;
          else
            for (int h = g * G; h < (g + 1) * G && !k; ++h) k = s.unit_mask(h)[j] != 0;
          if (k) kept.push_back(j);
        }
        const auto keep = think_channel_mask(think_channel_scores(q_sq[g], D.k_head(g), d, kept), ratio_);
        std::copy(keep.begin(), keep.end(), s.key_channels.begin() + static_cast<std::ptrdiff_t>(g) * d);
      }
    }
    return sels;
  }

 private:
  std::string spec_;
  std::unique_ptr<Rule> base_;
  double ratio_;
  i64 window_;
};

RuleInfo think_info() {
  return {"think",
          "ThinK: prune the lowest-scoring key channels (mean q^2 x mean k^2) after a token rule",
          {{"base", "rule", "snapkv", "token selection rule (positional argument)"},
           {"ratio", "double", "0.5", "share of the head_dim channels zeroed per KV head"},
           {"window", "int", "32", "last prompt queries used for the channel scores"}}};
}

std::unique_ptr<Rule> build_think(SpecReader& r) {
  std::unique_ptr<Rule> base = r.get_rule_or(0, "snapkv");
  const double ratio = r.get_double("ratio", 0.5, 0.0, 1.0);
  const i64 window = r.get_int("window", 32, 1, 1LL << 40);
  return std::make_unique<ThinkRule>(r.canonical(), std::move(base), ratio, window);
}

KVSIM_RULE(think_info(), build_think);

}  // namespace
}  // namespace kvsim
