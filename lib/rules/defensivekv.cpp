// defensivekv(window, kernel, mass, alloc): the DefensiveKV presses of FFY0/DefensiveKV themselves
// (Feng et al., ICLR 2026), rules doc 2.34: EfficientDefensiveKVPress (alloc=layer) and
// EfficientLayerDefensiveKVPress (alloc=global, Layer-DefensiveKV). On top of defensive(...)'s
// worst-case scores (2.24, group max, prior floor) their CriticalKV-like transform: each score is
// weighted by the token's share, across the layer's KV heads, of the group-mean projected value
// norm ||v_j W_o^h||_1; the first tokens by mean window attention up to `mass` minus the window
// bias (at most the budget minus the window, per head) are raised to the layer's largest score,
// and so is the window. The scores therefore depend on the budget. Then one flattened top-k over
// the layer's heads (layer) or over every layer of the run (global), window entries included.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/defensive.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

struct DefensiveKVParams {
  i64 window = 32;
  int kernel = 5;
  double mass = 0.9;
  bool global = false;
};

// What does not depend on the budget, for one layer.
struct LayerParts {
  int units = 0;
  i64 n_c = 0, m = 0;
  std::vector<float> score;               // [units][m] worst-case score x the token's value-norm share
  std::vector<std::vector<i64>> by_mass;  // per unit: prefix tokens by mean window attention, largest first
  std::vector<i64> mass_count;            // per unit: tokens before the cumulative share reaches the threshold
  std::vector<std::uint8_t> absent;       // decode view: [units][n_c] tokens this unit no longer holds
};

LayerParts layer_parts(const RuleInput& in, const DefensiveKVParams& p, const std::string& who) {
  if (!in.cache) fail(who, "", "needs the layer cache (projected value norms)");
  if (!in.data->has_o_proj())
    fail(in.meta->path, "/layers/" + std::to_string(in.layer) + "/o_proj",
         "missing; " + who + " needs W_o for the projected value norms");
  const LayerData& d = *in.data;
  const int G = d.num_heads / d.num_kv_heads;
  const DefensiveWindow win = defensive_window(in, 0, in.n_c, p.window, p.kernel, true, who);
  LayerParts P;
  P.units = d.num_kv_heads;
  P.n_c = in.n_c;
  P.m = win.m;
  const i64 m = P.m;
  // Defensive scores: the worst case over the group, floored at its mean (the prior correction).
  std::vector<float> def(static_cast<std::size_t>(P.units) * m, 0.0f);
  for (int h = 0; h < d.num_heads; ++h)
    for (i64 j = 0; j < m; ++j) {
      float& x = def[static_cast<std::size_t>(h / G) * m + j];
      x = std::max(x, win.worst[static_cast<std::size_t>(h) * m + j]);
    }
  for (int u = 0; u < P.units && m > 0; ++u) {
    float* x = def.data() + static_cast<std::size_t>(u) * m;
    const double mean = std::accumulate(x, x + m, 0.0) / static_cast<double>(m);
    for (i64 j = 0; j < m; ++j) x[j] = std::max(x[j], static_cast<float>(mean));
  }
  // Group-mean projected value norms, each token's share across the KV heads.
  in.cache->precompute_norms(NormKind::l1);
  std::vector<float> wov(def.size(), 0.0f);
  for (int h = 0; h < d.num_heads; ++h) {
    const float* nu = in.cache->value_norms(h, NormKind::l1);
    for (i64 j = 0; j < m; ++j) wov[static_cast<std::size_t>(h / G) * m + j] += nu[j] / static_cast<float>(G);
  }
  P.score.assign(def.size(), 0.0f);
  for (i64 j = 0; j < m; ++j) {
    float total = 0.0f;
    for (int u = 0; u < P.units; ++u) total += wov[static_cast<std::size_t>(u) * m + j];
    for (int u = 0; u < P.units; ++u) {
      const std::size_t at = static_cast<std::size_t>(u) * m + j;
      P.score[at] = total > 0 ? def[at] * (wov[at] / total) : 0.0f;
    }
  }
  // Stage 1: tokens by normalised mean window attention, counted until the cumulative share
  // reaches mass - window_bias (the count excludes the token that reaches it; 0 if none does).
  const double threshold = p.mass - win.window_bias;
  P.by_mass.resize(P.units);
  P.mass_count.assign(P.units, 0);
  for (int u = 0; u < P.units; ++u) {
    const double* ave = win.mean_raw.data() + static_cast<std::size_t>(u) * m;
    const double sum = std::accumulate(ave, ave + m, 0.0);
    auto& order = P.by_mass[u];
    order.resize(m);
    std::iota(order.begin(), order.end(), i64{0});
    std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return ave[a] > ave[b]; });
    double cum = 0;
    for (i64 i = 0; i < m; ++i) {
      cum += sum > 0 ? ave[order[i]] / sum : 0.0;
      if (cum >= threshold) {
        P.mass_count[u] = i;
        break;
      }
    }
  }
  if (in.absent) P.absent = *in.absent;
  return P;
}

// Per-unit cap on the stage-1 tokens: the budget's kept tokens (kvpress's float) minus the window.
i64 stage1_cap(const Budget& b, const LayerParts& P, i64 window, const std::string& who) {
  const i64 cap = static_cast<i64>(std::floor(b.exact_tokens(P.n_c) - static_cast<double>(window)));
  if (cap < 0)
    fail(who, "budget " + b.text,
         "keeps " + std::to_string(b.tokens_for(P.n_c)) + " tokens per KV head, fewer than the " +
             std::to_string(window) + "-token observation window");
  return cap;
}

// A budget's scores over [0, n_c) per unit: marked stage-1 tokens and the window at the layer's
// largest score; tokens a decode view's unit no longer holds are NaN (never selected).
std::vector<float> budget_scores(const LayerParts& P, i64 cap) {
  float top = P.score.empty() ? 0.0f : *std::max_element(P.score.begin(), P.score.end());
  std::vector<float> out(static_cast<std::size_t>(P.units) * P.n_c, top);
  for (int u = 0; u < P.units; ++u) {
    float* x = out.data() + static_cast<std::size_t>(u) * P.n_c;
    std::copy_n(P.score.data() + static_cast<std::size_t>(u) * P.m, P.m, x);
    for (i64 i = 0; i < std::min(P.mass_count[u], cap); ++i) x[P.by_mass[u][i]] = top;
    if (P.absent.empty()) continue;
    for (i64 j = 0; j < P.n_c; ++j)
      if (P.absent[static_cast<std::size_t>(u) * P.n_c + j]) x[j] = NAN;
  }
  return out;
}

// Kept counts per unit of the flattened top `total` entries.
std::vector<i64> flattened_counts(const std::vector<float>& scores, int units, i64 n_c, i64 total) {
  std::vector<i64> idx(static_cast<std::size_t>(std::max<i64>(total, 0)));
  idx.resize(kernels::topk(scores.data(), static_cast<i64>(scores.size()), total, idx.data()));
  std::vector<i64> count(units, 0);
  for (i64 k : idx) ++count[k / n_c];
  return count;
}

class DefensiveKVPlanner : public LayerPlanner {
 public:
  DefensiveKVPlanner(DefensiveKVParams p, std::string spec) : p_(p), spec_(std::move(spec)) {}
  void observe(const RuleInput& in) override { layers_[in.layer] = layer_parts(in, p_, spec_); }

  std::vector<std::map<int, std::vector<i64>>> plan(const std::vector<Budget>& budgets) const override {
    // Every layer has the same units and n_c: the layers' entries, layer after layer, are
    // L x units rows of n_c, ranked together by flattened_counts.
    const LayerParts& first = layers_.begin()->second;
    std::vector<int> ids;
    for (const auto& [layer, P] : layers_) ids.push_back(layer);
    std::vector<std::map<int, std::vector<i64>>> out;
    for (const Budget& b : budgets) {
      std::vector<float> all;
      for (const auto& [layer, P] : layers_) {
        const auto s = budget_scores(P, stage1_cap(b.for_layer(layer), P, p_.window, spec_));
        all.insert(all.end(), s.begin(), s.end());
      }
      const std::vector<i64> count =
          flattened_counts(all, static_cast<int>(ids.size()) * first.units, first.n_c,
                           b.share_across(ids, first.n_c * first.units, first.n_c));
      std::map<int, std::vector<i64>> plan;
      for (std::size_t li = 0; li < ids.size(); ++li)
        plan[ids[li]].assign(count.begin() + static_cast<std::ptrdiff_t>(li) * first.units,
                             count.begin() + static_cast<std::ptrdiff_t>(li + 1) * first.units);
      out.push_back(std::move(plan));
    }
    return out;
  }

 private:
  DefensiveKVParams p_;
  std::string spec_;
  std::map<int, LayerParts> layers_;
};

class DefensiveKVRule : public Rule {
 public:
  DefensiveKVRule(std::string spec, DefensiveKVParams p) : spec_(std::move(spec)), p_(p) {}
  std::string spec() const override { return spec_; }
  std::unique_ptr<LayerPlanner> layer_planner() const override {
    return p_.global ? std::make_unique<DefensiveKVPlanner>(p_, spec_) : nullptr;
  }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    const std::vector<std::vector<i64>>* planned = p_.global ? &require_plan(in, spec_, budgets.size()) : nullptr;
    const LayerParts P = layer_parts(in, p_, spec_);
    std::vector<Selection> out;
    for (std::size_t bi = 0; bi < budgets.size(); ++bi) {
      const Budget& b = budgets[bi];
      const std::vector<float> s = budget_scores(P, stage1_cap(b, P, p_.window, spec_));
      const std::vector<i64> count =
          planned ? (*planned)[bi] : flattened_counts(s, P.units, P.n_c, b.share_of(P.n_c * P.units, P.n_c));
      Selection sel(GqaMode::kv, P.units, P.n_c);
      sel.tied_at_cut.assign(P.units, 0);
      i64 kept = 0;
      for (int u = 0; u < P.units; ++u) {
        const float* x = s.data() + static_cast<std::size_t>(u) * P.n_c;
        kernels::topk_mask(x, P.n_c, std::min(count[u], P.n_c), sel.unit_mask(u));
        sel.tied_at_cut[u] = ties_at_cut(x, nullptr, sel.unit_mask(u), P.n_c);
        kept += sel.kept_count(u);
      }
      const i64 mean = (kept + P.units / 2) / P.units;
      if (planned || mean != b.tokens_for(P.n_c)) sel.budget_tokens = mean;
      out.push_back(std::move(sel));
    }
    return out;
  }

 private:
  std::string spec_;
  DefensiveKVParams p_;
};

KVSIM_RULE((RuleInfo{"defensivekv",
                     "DefensiveKV as FFY0/DefensiveKV runs it: defensive scores weighted by each token's share of "
                     "the projected value norm across KV heads, stage-1 tokens by window attention mass and the "
                     "window raised to the layer maximum, one flattened top-k over the layer's heads "
                     "(EfficientDefensiveKVPress) or over every layer (alloc=global: Layer-DefensiveKV)",
                     {{"window", "int", "32", "observation window w (queries; scored at the layer maximum)"},
                      {"kernel", "int", "5", "average pooling kernel per window row, odd (1: none)"},
                      {"mass", "double", "0.9", "stage-1 share of the mean window attention (less the window bias)"},
                      {"alloc", "choice layer|global", "layer", "flattened top-k over the layer's heads or every layer"}},
                     /*in_all=*/false}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             DefensiveKVParams p;
             p.window = r.get_int("window", 32, 1, 1 << 20);
             p.kernel = r.get_pool_kernel(5);
             p.mass = r.get_double("mass", 0.9, 0.0, 1.0);
             p.global = r.get_choice("alloc", "layer", {"layer", "global"}) == "global";
             return std::make_unique<DefensiveKVRule>(r.canonical(), p);
           });

}  // namespace
}  // namespace kvsim
