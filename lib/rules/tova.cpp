#include "rules/tova.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {

std::vector<float> tova_scores(const LayerData& data, i64 row, const std::vector<i64>& pos,
                               const kernels::LogitSpec& logit) {
  const int H = data.num_heads, G = H / data.num_kv_heads, d = data.head_dim;
  const i64 m = static_cast<i64>(pos.size());
  std::vector<float> probs(static_cast<std::size_t>(H * m)), mean(static_cast<std::size_t>(m));
  for (int h = 0; h < H; ++h)
    rules_more::subset_probs(data.q_row(h, row), data.k_head(h / G), d, pos.data(), m, logit, probs.data() + h * m);
  kernels::group_reduce(probs.data(), H, m, m, kernels::GroupOp::mean, mean.data());
  return mean;
}

namespace {

// Top-N of the listed positions by score (ties: lower position), sorted by position.
std::vector<i64> keep_best(const std::vector<i64>& pos, const std::vector<float>& score, i64 N) {
  if (static_cast<i64>(pos.size()) <= N) return pos;
  std::vector<std::uint8_t> mask(pos.size(), 0);
  rules_more::keep_top(score.data(), static_cast<i64>(pos.size()), N, nullptr, mask.data());
  std::vector<i64> out;
  for (std::size_t i = 0; i < pos.size(); ++i)
    if (mask[i]) out.push_back(pos[i]);
  return out;
}

}  // namespace

Selection tova_stepwise(const RuleInput& in, i64 cache_size) {
  const LayerData& D = *in.data;
  const i64 n_c = in.n_c;
  const kernels::LogitSpec logit = in.meta->logits();
  const i64 last_row = rules_more::require_q_rows(*in.meta, n_c - 1, n_c, "tova", "the last prompt query")[0];
  const std::vector<i64> ev = rules_more::eval_positions(in);
  const i64 n_eval = static_cast<i64>(ev.size());
  std::vector<i64> order(ev.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return ev[a] < ev[b]; });

  // Prefill: the last prompt row over [0, n_c), its own key included and competing.
  std::vector<i64> present(static_cast<std::size_t>(n_c));
  std::iota(present.begin(), present.end(), 0);
  present = keep_best(present, tova_scores(D, last_row, present, logit), cache_size);

  Selection sel(GqaMode::kv, D.num_kv_heads, n_c);
  for (int u = 0; u < sel.units; ++u)
    for (i64 j : present) sel.unit_mask(u)[j] = 1;
  sel.per_query.resize(static_cast<std::size_t>(sel.units * n_eval));
  i64 next_new = n_c;
  for (i64 qi : order) {
    const i64 t = ev[qi];
    for (i64 p = next_new; p <= t; ++p) present.push_back(p);
    next_new = std::max(next_new, t + 1);
    std::vector<std::uint8_t> q_mask(static_cast<std::size_t>(t + 1), 0);
    for (i64 j : present) q_mask[j] = 1;
    for (int u = 0; u < sel.units; ++u) sel.per_query[static_cast<std::size_t>(u * n_eval + qi)] = q_mask;
    present = keep_best(present, tova_scores(D, in.eval_rows[qi], present, logit), cache_size);
  }
  return sel;
}

namespace {

// kvpress TOVAPress: softmax over [begin, end) including the last query's own key, its own
// column ignored (protected, not renormalised), every KV head the same scores.
class TovaOneShot : public ScoredRule {
 public:
  using ScoredRule::ScoredRule;
  bool attention_like() const override { return true; }
  UnitScores scores_range(const RuleInput& in, i64 begin, i64 end) const override {
    rules_more::check_input(in, "tova");
    const LayerData& D = *in.data;
    const i64 row = rules_more::require_q_rows(*in.meta, end - 1, end, "tova", "the last prompt query")[0];
    std::vector<i64> pos(static_cast<std::size_t>(end - begin));
    std::iota(pos.begin(), pos.end(), begin);
    const std::vector<float> score = tova_scores(D, row, pos, in.meta->logits());
    UnitScores s(GqaMode::kv, D.num_kv_heads, end - begin);
    for (int u = 0; u < s.units; ++u) std::copy(score.begin(), score.end(), s.unit(u));
    s.protect_range(s.n_c - 1, s.n_c);
    return s;
  }
};

class TovaStepwise : public Rule {
 public:
  explicit TovaStepwise(std::string spec) : spec_(std::move(spec)) {}
  std::string spec() const override { return spec_; }
  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    rules_more::check_input(in, "tova");
    std::vector<Selection> out;
    for (const Budget& b : budgets) out.push_back(tova_stepwise(in, b.tokens_for(in.n_c)));
    return out;
  }

 private:
  std::string spec_;
};

RuleInfo tova_info() {
  return {"tova",
          "TOVA: current query's attention averaged over all heads of the layer; one set per layer",
          {{"variant", "choice oneshot|stepwise", "oneshot",
            "oneshot: kvpress (last prompt row, last token kept); stepwise: original fixed cache, "
            "updated by every evaluation query"}}};
}

std::unique_ptr<Rule> build_tova(SpecReader& r) {
  const std::string variant = r.get_choice("variant", "oneshot", {"oneshot", "stepwise"});
  if (variant == "stepwise") return std::make_unique<TovaStepwise>(r.canonical());
  return std::make_unique<TovaOneShot>(r.canonical());
}

KVSIM_RULE(tova_info(), build_tova);

}  // namespace
}  // namespace kvsim
