// ada(base, alpha, variant, normalize, skip, window_in_floor): Ada-KV (rules doc 2.8).
#include "rules/ada.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {

std::vector<i64> ada_flattened_counts(const float* scores, int H, i64 m, i64 total) {
  std::vector<i64> counts(H, 0);
  const i64 n = static_cast<i64>(H) * m;
  total = std::min(total, n);
  if (total <= 0) return counts;
  std::vector<i64> idx(total);
  const i64 got = kernels::topk(scores, n, total, idx.data());
  for (i64 r = 0; r < got; ++r) ++counts[idx[r] / m];
  return counts;
}

std::vector<i64> ada_variant_a(const float* scores, int H, i64 m, i64 b, double alpha, bool normalize) {
  std::vector<float> scaled;
  const float* flat = scores;
  if (normalize) {
    scaled.assign(scores, scores + static_cast<i64>(H) * m);
    std::vector<i64> idx(std::min(b, m));
    for (int h = 0; h < H; ++h) {
      const float* s = scores + h * m;
      const i64 got = b > 0 ? kernels::topk(s, m, std::min(b, m), idx.data()) : 0;
      double top = 0, all = 0;
      for (i64 r = 0; r < got; ++r) top += s[idx[r]];
      for (i64 j = 0; j < m; ++j) all += s[j];
      const float rho = all > 0 ? static_cast<float>(top / all) : 1.0f;
      for (i64 j = 0; j < m; ++j) scaled[h * m + j] *= rho;
    }
    flat = scaled.data();
  }
  std::vector<i64> n = ada_flattened_counts(flat, H, m, static_cast<i64>(H) * b);
  const double floor_share = std::floor(alpha * static_cast<double>(b));
  for (auto& c : n) c = static_cast<i64>(std::nearbyint((1.0 - alpha) * static_cast<double>(c) + floor_share));
  return n;
}

std::vector<i64> ada_variant_b(const float* scores, int H, i64 m, i64 b, i64 n_floor) {
  n_floor = std::clamp<i64>(n_floor, 0, std::min(b, m));
  std::vector<float> forced(scores, scores + static_cast<i64>(H) * m);
  if (n_floor > 0) {
    std::vector<i64> idx(n_floor);
    for (int h = 0; h < H; ++h) {
      const i64 got = kernels::topk(scores + h * m, m, n_floor, idx.data());
      // +inf only inside this private copy, to count per-head memberships of the global cut.
      for (i64 r = 0; r < got; ++r) forced[h * m + idx[r]] = std::numeric_limits<float>::infinity();
    }
  }
  return ada_flattened_counts(forced.data(), H, m, static_cast<i64>(H) * b);
}

namespace {

class AdaRule : public ScoredRule {
 public:
  struct Params {
    double alpha = 0.2;
    bool variant_a = false;
    bool normalize = false;
    i64 skip = 0;
    bool window_in_floor = false;
  };
  AdaRule(std::string spec, std::unique_ptr<ScoredRule> base, Params p)
      : ScoredRule(std::move(spec)), base_(std::move(base)), p_(p) {}
  bool plain() const override { return false; }
  bool attention_like() const override { return true; }
  std::string wrapper_kind() const override { return "ada"; }
  UnitScores scores(const RuleInput& in) const override { return base_->scores(in); }
  i64 layer_budget(const RuleInput& in, const UnitScores& s, i64 B, double exact) const override {
    return base_->layer_budget(in, s, B, exact);
  }
  i64 forced_per_unit(const RuleInput& in, const UnitScores& s, i64 B) const override {
    if (p_.variant_a || in.layer < p_.skip) return 0;
    const i64 w = s.n_protected, n_safe = safeguard(B);
    return p_.window_in_floor ? std::max(n_safe, w) : std::min({n_safe, B - w, s.n_c - w}) + w;
  }
  std::vector<i64> unit_budgets(const RuleInput& in, const UnitScores& s, i64 B) const override {
    const i64 w = s.n_protected, m = s.n_c - w, b = B - w;
    const int H = s.units;
    if (b < 0)
      fail(spec(), "budget", std::to_string(B) + " tokens per head are fewer than the " + std::to_string(w) +
                                 " protected tokens");
    if (in.layer < p_.skip) return std::vector<i64>(H, B);
    // Compact the unprotected scores of every unit: [H][m].
    // Ranking needs only the order (log-space scores are fine); normalize sums masses.
    const bool masses = p_.variant_a && p_.normalize && s.log_space;
    std::vector<float> flat(static_cast<std::size_t>(H) * m);
    for (int u = 0; u < H; ++u) {
      const std::vector<float> lin = masses ? s.linear_scores(u) : std::vector<float>();
      const float* src = masses ? lin.data() : s.unit(u);
      i64 k = 0;
      for (i64 j = 0; j < s.n_c; ++j)
        if (!s.protect[j]) flat[u * m + k++] = src[j];
    }
    std::vector<i64> c;
    if (p_.variant_a) {
      c = ada_variant_a(flat.data(), H, m, b, p_.alpha, p_.normalize);
    } else {
      // kvpress: n_safe = int(alpha * n_kept) with the window inside n_kept; NVIDIA's press
      // lets the window eat the floor, the authors' port applies it to prefix tokens.
      const i64 n_safe = safeguard(B);
      c = ada_variant_b(flat.data(), H, m, b, p_.window_in_floor ? std::max<i64>(0, n_safe - w) : n_safe);
    }
    for (auto& x : c) x = std::min(x, m) + w;
    return c;
  }
  std::vector<Selection> select_counts(const RuleInput& in, const UnitScores& s,
                                       const std::vector<UnitCounts>& c) const override {
    return base_->select_counts(in, s, c);
  }

 private:
  // kvpress AdaKVPress: n_safe = int(n_kept * alpha), at least 1 when alpha > 0 (PR #264).
  i64 safeguard(i64 B) const {
    const i64 n = static_cast<i64>(std::floor(static_cast<double>(B) * p_.alpha));
    return p_.alpha > 0 && B > 0 ? std::max<i64>(1, n) : n;
  }

  std::unique_ptr<ScoredRule> base_;
  Params p_;
};

KVSIM_RULE((RuleInfo{"ada",
                     "Ada-KV: head-wise budgets from the flattened top-(units*B) of the base scores, with a "
                     "uniform safeguard; the layer keeps units*B tokens",
                     {{"base", "rule", "snapkv", "attention scorer, optionally pyramid(...) (positional argument)"},
                      {"alpha", "double", "0.2", "uniform safeguard share alpha_u in [0, 1]"},
                      {"variant", "choice A|B", "B",
                       "A: AdaKV repo, B_h = round_half_even((1-a) n_h + floor(a b)); B: kvpress, per-head "
                       "top-floor(a B) forced then global top-k"},
                      {"normalize", "bool", "false", "variant A: scale head scores by top-b mass share first"},
                      {"skip", "int", "0", "layers below this index use uniform budgets"},
                      {"window_in_floor", "bool", "false",
                       "variant B: the window counts inside the safeguard floor (NVIDIA kvpress)"}}}),
           [](SpecReader& r) -> std::unique_ptr<Rule> {
             auto base = require_scored(r.get_rule_or(0, "snapkv"), "ada");
             if (!base->attention_like())
               r.error("base rule '" + base->spec() + "' does not score attention (use snapkv, oracle, ...)");
             if (base->wrapper_kind() == "ada" || base->wrapper_kind() == "critical")
               r.error("base rule '" + base->spec() + "' cannot be wrapped by ada (write critical(ada(...)))");
             AdaRule::Params p;
             p.alpha = r.get_double("alpha", 0.2, 0.0, 1.0);
             p.variant_a = r.get_choice("variant", "B", {"A", "B"}) == "A";
             p.normalize = r.get_bool("normalize", false);
             p.skip = r.get_int("skip", 0, 0, 1 << 20);
             p.window_in_floor = r.get_bool("window_in_floor", false);
             return std::make_unique<AdaRule>(r.canonical(), std::move(base), p);
           });

}  // namespace
}  // namespace kvsim
