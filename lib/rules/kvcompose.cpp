// kvcompose: KVCompose (arXiv 2509.05165; kvpress KVComposePress), rules doc 2.30. Scores from
// the question's attention (kvpress's second pass: the question tokens after the compression
// point attending over the context), then one allocation across every layer of the run:
//   S[l][g][j] = group_agg over g's query heads of task_agg over the evaluation queries of their
//                attention on token j (max, mean); times ||v_j|| (vnorm); plus the layer's mean
//                over KV heads (head_mean);
//   structured: the layer curve c_l[i] = head_agg over KV heads of the i-th largest S[l][g]
//               (each head sorted alone), layer 0's curve the maximum over layers; the global
//               top-N of every curve gives layer l count_l (at least max(1, lower)), and every
//               KV head keeps its own top count_l;
//   unstructured: the same over every head's own sorted scores, so each KV head gets a count.
// N is the budget's share of all (layer x token) items: kvpress's int(L n_c (1 - cr)).
#include <algorithm>
#include <cmath>

#include "attention/layer_cache.h"
#include "core/error.h"
#include "kernels/kernels.h"
#include "rules/registry.h"
#include "rules/scored_rule.h"

namespace kvsim {
namespace {

struct KVComposeParams {
  bool structured = true, task_max = true, group_max = false, head_max = false, vnorm = false, head_mean = true;
  i64 lower = 0;
};

class KVComposeRule;

class KVComposePlanner : public LayerPlanner {
 public:
  KVComposePlanner(const KVComposeRule& rule, KVComposeParams p) : rule_(rule), p_(p) {}
  void observe(const RuleInput& in) override;
  std::vector<std::map<int, std::vector<i64>>> plan(const std::vector<Budget>& budgets) const override;

 private:
  const KVComposeRule& rule_;
  KVComposeParams p_;
  i64 n_c_ = 0;
  std::map<int, std::vector<std::vector<float>>> sorted_;  // layer -> KV head -> scores, largest first
};

class KVComposeRule : public ScoredRule {
 public:
  KVComposeRule(std::string spec, KVComposeParams p) : ScoredRule(std::move(spec)), p_(p) {}
  bool attention_like() const override { return true; }
  bool takes_threshold() const override { return false; }
  std::unique_ptr<LayerPlanner> layer_planner() const override {
    return std::make_unique<KVComposePlanner>(*this, p_);
  }

  UnitScores scores(const RuleInput& in) const override {
    if (!in.cache) fail(spec(), "", "needs the layer cache of evaluation attention");
    const LayerData& d = *in.data;
    const LayerCache& c = *in.cache;
    const i64 n = in.n_c;
    if (c.n_eval() == 0) fail(spec(), "", "no evaluation queries at or after the compression point");
    const int H = d.num_heads, G = H / d.num_kv_heads;
    // kvpress's second pass is the question: the evaluation queries in the question segment, or
    // all of them when none is (a trace without a question, or the aware protocol).
    std::vector<std::uint8_t> use(static_cast<std::size_t>(c.n_eval()), 0);
    i64 n_use = 0;
    for (i64 q = 0; q < c.n_eval(); ++q) {
      const i64 pos = c.eval_pos(q);
      n_use += use[q] = pos < static_cast<i64>(in.meta->segment.size()) && in.meta->segment[pos] == kQuestion;
    }
    if (n_use == 0) std::fill(use.begin(), use.end(), 1), n_use = c.n_eval();
    // Per query head: max (or mean, accumulated in double) over those queries.
    std::vector<double> acc(static_cast<std::size_t>(H) * n, p_.task_max ? -INFINITY : 0.0);
    c.walk_tiles(QuerySet::eval, [&](int g0, int g1, i64 q0, i64 q1) {
#pragma omp parallel for schedule(dynamic)
      for (int h = g0 * G; h < g1 * G; ++h) {
        double* a = acc.data() + static_cast<std::size_t>(h) * n;
        for (i64 q = q0; q < q1; ++q) {
          if (!use[q]) continue;
          const float* pr = c.prob_row(QuerySet::eval, h, q);
          for (i64 j = 0; j < n; ++j) a[j] = p_.task_max ? std::max(a[j], static_cast<double>(pr[j])) : a[j] + pr[j];
        }
      }
    }, true);
    UnitScores s(GqaMode::kv, d.num_kv_heads, n);
    for (int g = 0; g < d.num_kv_heads; ++g) {
      float* out = s.unit(g);
      for (i64 j = 0; j < n; ++j) {
        float x = p_.group_max ? -INFINITY : 0.0f;  // float32 in head order, as kvpress's aggregators
        for (int r = 0; r < G; ++r) {
          const double a = acc[static_cast<std::size_t>(g * G + r) * n + j];
          const float v = static_cast<float>(p_.task_max ? a : a / static_cast<double>(n_use));
          x = p_.group_max ? std::max(x, v) : x + v;
        }
        out[j] = p_.group_max ? x : x / static_cast<float>(G);
        if (p_.vnorm) {
          const float* v = d.v_row(g, j);
          double sq = 0;
          for (int e = 0; e < d.head_dim; ++e) sq += static_cast<double>(v[e]) * v[e];
          out[j] *= static_cast<float>(std::sqrt(sq));
        }
      }
    }
    if (p_.head_mean)
      for (i64 j = 0; j < n; ++j) {
        float m = 0;
        for (int g = 0; g < s.units; ++g) m += s.unit(g)[j];
        m /= static_cast<float>(s.units);
        for (int g = 0; g < s.units; ++g) s.unit(g)[j] += m;
      }
    return s;
  }

  std::vector<Selection> select(const RuleInput& in, const std::vector<Budget>& budgets) const override {
    return select_planned(in, budgets.size());
  }

 private:
  KVComposeParams p_;
};

void KVComposePlanner::observe(const RuleInput& in) {
  const UnitScores s = rule_.scores(in);
  n_c_ = s.n_c;
  auto& heads = sorted_[in.layer];
  for (int g = 0; g < s.units; ++g) {
    heads.emplace_back(s.unit(g), s.unit(g) + s.n_c);
    std::sort(heads.back().begin(), heads.back().end(), std::greater<float>());
  }
}

std::vector<std::map<int, std::vector<i64>>> KVComposePlanner::plan(const std::vector<Budget>& budgets) const {
  // The curves the global cut ranks: per layer (structured) or per (layer, KV head).
  std::vector<std::pair<int, int>> owner;  // curve -> (layer, KV head or -1)
  std::vector<std::vector<float>> curves;
  for (const auto& [layer, heads] : sorted_) {
    if (p_.structured) {
      std::vector<float> c(static_cast<std::size_t>(n_c_), p_.head_max ? -INFINITY : 0.0f);
      for (const auto& h : heads)
        for (i64 i = 0; i < n_c_; ++i) c[i] = p_.head_max ? std::max(c[i], h[i]) : c[i] + h[i];
      if (!p_.head_max)
        for (float& x : c) x /= static_cast<float>(heads.size());
      curves.push_back(std::move(c));
      owner.push_back({layer, -1});
    } else {
      for (std::size_t g = 0; g < heads.size(); ++g) {
        curves.push_back(heads[g]);
        owner.push_back({layer, static_cast<int>(g)});
      }
    }
  }
  for (auto& c : curves)
    for (i64 i = 0; i < std::min(p_.lower, n_c_); ++i) c[i] += 1e9f;
  if (p_.structured && !owner.empty() && owner[0].first == 0)  // layer 0 is never cut before another
    for (std::size_t k = 1; k < curves.size(); ++k)
      for (i64 i = 0; i < n_c_; ++i) curves[0][i] = std::max(curves[0][i], curves[k][i]);
  // Every (curve, rank) item, best first (kernels::topk: ties to the earlier curve, then rank), as
  // deep as the largest budget; each budget takes a prefix.
  std::vector<int> layers;
  for (const auto& entry : sorted_) layers.push_back(entry.first);
  std::vector<float> flat;
  for (const auto& c : curves) flat.insert(flat.end(), c.begin(), c.end());
  const i64 items = static_cast<i64>(flat.size()), per_layer = layers.empty() ? 0 : items / static_cast<i64>(layers.size());
  std::vector<i64> n_kept;  // the budget's share of every item; per-layer budgets: the sum of theirs
  for (const Budget& b : budgets) n_kept.push_back(std::min(b.share_across(layers, per_layer, n_c_), items));
  std::vector<i64> order(n_kept.empty() ? 0 : *std::max_element(n_kept.begin(), n_kept.end()));
  order.resize(kernels::topk(flat.data(), items, static_cast<i64>(order.size()), order.data()));
  const int units = sorted_.empty() ? 0 : static_cast<int>(sorted_.begin()->second.size());
  std::vector<std::map<int, std::vector<i64>>> out;
  for (std::size_t bi = 0; bi < budgets.size(); ++bi) {
    std::vector<i64> per_curve(curves.size(), 0);
    for (i64 k = 0; k < std::min(n_kept[bi], static_cast<i64>(order.size())); ++k) ++per_curve[order[k] / n_c_];
    std::map<int, std::vector<i64>> plan;
    for (std::size_t k = 0; k < curves.size(); ++k) {
      auto& counts = plan[owner[k].first];
      counts.resize(units, 0);
      if (p_.structured) {
        // kvpress floors each layer at max(1, lower): no layer cache left empty.
        const i64 c = std::min(n_c_, std::max({per_curve[k], p_.lower, i64{1}}));
        std::fill(counts.begin(), counts.end(), c);
      } else {
        counts[owner[k].second] = per_curve[k];
      }
    }
    out.push_back(std::move(plan));
  }
  return out;
}

RuleInfo kvcompose_info() {
  return {"kvcompose",
          "KVCompose (kvpress KVComposePress, arXiv 2509.05165): the question's attention per token, kept counts "
          "allocated across every layer by composite (sorted, head-aggregated) score curves",
          {{"structured", "bool", "true", "one count per layer for all its KV heads (false: one count per KV head)"},
           {"task", "choice max|mean", "max", "aggregation over the question's queries"},
           {"group", "choice mean|max", "mean", "aggregation over a KV head's query heads"},
           {"head", "choice mean|max", "mean", "aggregation of the sorted head scores into a layer curve"},
           {"vnorm", "bool", "false", "multiply each score by the value norm"},
           {"head_mean", "bool", "true", "add the layer's mean score over KV heads to every head's"},
           {"lower", "int >= 0", "0", "tokens every layer (head) keeps at least (kvpress keep_token_lower_bound)"}},
          /*in_all=*/false};  // a cross-layer allocation: each layer keeps its own count
}

std::unique_ptr<Rule> build_kvcompose(SpecReader& r) {
  KVComposeParams p;
  p.structured = r.get_bool("structured", true);
  p.task_max = r.get_choice("task", "max", {"max", "mean"}) == "max";
  p.group_max = r.get_choice("group", "mean", {"mean", "max"}) == "max";
  p.head_max = r.get_choice("head", "mean", {"mean", "max"}) == "max";
  p.vnorm = r.get_bool("vnorm", false);
  p.head_mean = r.get_bool("head_mean", true);
  p.lower = r.get_int("lower", 0, 0, 1LL << 40);
  return std::make_unique<KVComposeRule>(r.canonical(), p);
}

KVSIM_RULE(kvcompose_info(), build_kvcompose);

}  // namespace
}  // namespace kvsim
