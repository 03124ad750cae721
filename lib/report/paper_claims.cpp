#include "report/paper_claims.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "report/order_stats.h"

namespace kvsim::report {

namespace {

using Key = std::tuple<std::string, std::string, int, int>;  // rule, budget, layer, head

std::map<Key, const MetricRow*> index_rows(const ReplayOutput& out) {
  std::map<Key, const MetricRow*> idx;
  for (const auto& r : out.rows)
    if (r.eval == out.eval) idx[{r.rule, r.budget, r.layer, r.head}] = &r;
  return idx;
}

bool rule_present(const ReplayOutput& out, const std::string& rule) {
  return std::find(out.rules.begin(), out.rules.end(), rule) != out.rules.end();
}

}  // namespace

std::string wrapped_base(const std::string& spec, const std::string& wrapper) {
  const std::string prefix = wrapper + "(";
  if (spec.rfind(prefix, 0) != 0 || spec.back() != ')') return "";
  int depth = 0;
  for (std::size_t i = prefix.size(); i + 1 < spec.size(); ++i) {
    const char c = spec[i];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (c == ',' && depth == 0) return spec.substr(prefix.size(), i - prefix.size());
  }
  return spec.substr(prefix.size(), spec.size() - 1 - prefix.size());
}

std::vector<RuleBudgetStats> rule_budget_stats(const ReplayOutput& out) {
  std::vector<RuleBudgetStats> stats;
  for (const auto& rule : out.rules) {
    for (const auto& budget : out.budgets) {
      RuleBudgetStats s;
      s.rule = rule;
      s.budget = budget;
      for (const auto& r : out.rows) {
        if (r.rule != rule || r.budget != budget || r.head != -1 || r.eval != out.eval) continue;
        ++s.n_layers;
        s.budget_tokens += r.budget_tokens;
        s.kept_tokens += r.kept_tokens;
        s.retained_mass += r.retained_mass;
        s.pert_l1 += r.pert_l1;
        s.rel_pert_l1 += r.rel_pert_l1;
        s.bound_ada += r.bound_ada;
        s.bound_critical += r.bound_critical;
      }
      if (s.n_layers == 0) continue;
      const double n = s.n_layers;
      s.budget_tokens /= n; s.kept_tokens /= n; s.retained_mass /= n; s.pert_l1 /= n; s.rel_pert_l1 /= n;
      s.bound_ada /= n; s.bound_critical /= n;
      stats.push_back(s);
    }
  }
  return stats;
}

std::vector<std::vector<double>> tightness_ratios(const ReplayOutput& out, bool critical_bound) {
  std::vector<std::vector<double>> ratios(out.layers.size());
  for (const auto& r : out.rows) {
    if (r.head < 0 || r.eval != out.eval) continue;
    const double bound = critical_bound ? r.bound_critical : r.bound_ada;
    if (!(bound > 0)) continue;
    const auto li = std::lower_bound(out.layers.begin(), out.layers.end(), r.layer) - out.layers.begin();
    ratios[static_cast<std::size_t>(li)].push_back(r.pert_l1 / bound);
  }
  return ratios;
}

std::vector<LayerTightness> layer_tightness(const ReplayOutput& out) {
  const auto crit = tightness_ratios(out, true), ada = tightness_ratios(out, false);
  std::vector<LayerTightness> res;
  for (std::size_t i = 0; i < out.layers.size(); ++i) {
    LayerTightness t;
    t.layer = out.layers[i];
    auto fill = [](const std::vector<double>& v, long long& n, double& med, double& mean, double& mx, long long& exceed) {
      n = static_cast<long long>(v.size());
      med = median(v);
      mean = 0;
      mx = 0;
      exceed = 0;
      for (double x : v) {
        mean += x;
        mx = std::max(mx, x);
        if (x > 1 + 1e-5) ++exceed;
      }
      if (n) mean /= static_cast<double>(n);
    };
    fill(crit[i], t.n_critical, t.median_critical, t.mean_critical, t.max_critical, t.exceed_critical);
    fill(ada[i], t.n_ada, t.median_ada, t.mean_ada, t.max_ada, t.exceed_ada);
    res.push_back(t);
  }
  return res;
}

std::vector<WinRate> critical_win_rates(const ReplayOutput& out) {
  const auto idx = index_rows(out);
  std::vector<WinRate> res;
  for (const auto& rule : out.rules) {
    const std::string base = wrapped_base(rule, "critical");
    if (base.empty() || !rule_present(out, base)) continue;
    for (const auto& budget : out.budgets) {
      WinRate total;
      total.rule = rule;
      total.base = base;
      total.budget = budget;
      std::vector<WinRate> per_layer;
      double cumulative = 0;
      for (int layer : out.layers) {
        WinRate w;
        w.rule = rule;
        w.base = base;
        w.budget = budget;
        w.layer = layer;
        for (int h : out.heads) {
          const auto a = idx.find({rule, budget, layer, h}), b = idx.find({base, budget, layer, h});
          if (a == idx.end() || b == idx.end()) continue;
          ++w.heads;
          if (a->second->pert_l1 < b->second->pert_l1) ++w.wins;
          else if (a->second->pert_l1 == b->second->pert_l1) ++w.ties;
        }
        const auto la = idx.find({rule, budget, layer, -1}), lb = idx.find({base, budget, layer, -1});
        if (w.heads == 0 || la == idx.end() || lb == idx.end()) continue;
        w.rate = static_cast<double>(w.wins) / static_cast<double>(w.heads);
        w.pert_rule = la->second->pert_l1;
        w.pert_base = lb->second->pert_l1;
        cumulative += w.pert_base - w.pert_rule;
        w.cumulative_advantage = cumulative;
        total.heads += w.heads;
        total.wins += w.wins;
        total.ties += w.ties;
        total.pert_rule += w.pert_rule;
        total.pert_base += w.pert_base;
        per_layer.push_back(w);
      }
      if (total.heads == 0) continue;
      total.rate = static_cast<double>(total.wins) / static_cast<double>(total.heads);
      total.cumulative_advantage = cumulative;
      res.push_back(total);
      res.insert(res.end(), per_layer.begin(), per_layer.end());
    }
  }
  return res;
}

std::vector<AdaEffect> ada_effects(const ReplayOutput& out) {
  const auto idx = index_rows(out);
  std::vector<AdaEffect> res;
  for (const auto& rule : out.rules) {
    const std::string base = wrapped_base(rule, "ada");
    if (base.empty() || !rule_present(out, base)) continue;
    for (const auto& budget : out.budgets) {
      for (int layer : out.layers) {
        const auto la = idx.find({rule, budget, layer, -1}), lb = idx.find({base, budget, layer, -1});
        if (la == idx.end() || lb == idx.end()) continue;
        AdaEffect e;
        e.rule = rule;
        e.base = base;
        e.budget = budget;
        e.layer = layer;
        for (int h : out.heads) {
          const auto a = idx.find({rule, budget, layer, h}), b = idx.find({base, budget, layer, h});
          if (a != idx.end()) e.sum_f_ada += a->second->retained_mass;
          if (b != idx.end()) e.sum_f_uniform += b->second->retained_mass;
        }
        e.bound_ada = la->second->bound_ada;
        e.bound_uniform = lb->second->bound_ada;
        e.pert_ada = la->second->pert_l1;
        e.pert_uniform = lb->second->pert_l1;
        res.push_back(e);
      }
    }
  }
  return res;
}

std::vector<double> head_kept_tokens(const ReplayOutput& out, const std::string& rule, const std::string& budget) {
  std::vector<double> v;
  for (const auto& r : out.rows)
    if (r.rule == rule && r.budget == budget && r.head >= 0 && r.eval == out.eval) v.push_back(r.kept_tokens);
  return v;
}

}  // namespace kvsim::report
