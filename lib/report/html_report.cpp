#include "report/html_report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include "report/closed_loop_section.h"
#include "report/html_parts.h"
#include "report/html_table.h"
#include "report/head_auc.h"
#include "report/decode_section.h"
#include "report/memory_section.h"
#include "report/questions_section.h"
#include "report/optimum_ratio.h"
#include "report/paper_claims.h"
#include "rules/rule_labels.h"
#include "report/svg_heatmap.h"
#include "report/svg_plot.h"

namespace kvsim::report {

namespace {

using svg::Plot;
using svg::Scale;

const char* kStyle = R"(
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1320px;color:#222;line-height:1.45}
h1{font-size:26px;margin-bottom:4px} h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:40px}
h3{margin-top:28px} .note{color:#555;font-size:14px;max-width:1000px}
.plots{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start} .plots svg{border:1px solid #eee}
.tablewrap{overflow-x:auto;margin:10px 0} table.data{border-collapse:collapse;font-size:13px}
table.data caption{text-align:left;font-weight:bold;padding:4px 0;font-size:13px}
table.data th,table.data td{border:1px solid #ddd;padding:3px 8px} table.data th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums} code,pre{background:#f6f6f6;padding:2px 4px;font-size:12px}
summary{cursor:pointer;color:#1f5fa8;margin:6px 0} pre{white-space:pre-wrap;word-break:break-all;padding:8px} nav a{margin-right:14px}
)";


// ---------------------------------------------------------------- header

std::string replay_header(const ReplayOutput& out, const std::string& id) {
  std::string o;
  const JsonValue& s = out.summary;
  HtmlTable meta(id + "-meta", "Trace and protocol (summary.json)", {"field", "value"});
  auto add = [&](const std::string& k, const JsonValue* v) {
    if (v) meta.add_row({HtmlCell::str(k), v->is_number() ? HtmlCell::num(v->number()) : HtmlCell::str(v->to_text())});
  };
  if (const JsonValue* t = s.find("trace"))
    for (const auto& [k, v] : t->members()) add("trace." + k, &v);
  if (const JsonValue* pr = s.find("protocol"))
    for (const auto& [k, v] : pr->members()) add("protocol." + k, &v);
  for (const char* k : {"projected", "gqa_note", "kvsim_version", "isa", "threads", "created"}) add(k, s.find(k));
  o += "<pre>" + html_escape(s.get_string("command", "(command not recorded)")) + "</pre>";
  HtmlTable timings(id + "-timings", "Timings (summary.json)", {"phase", "seconds"});
  if (const JsonValue* t = s.find("timings"))
    for (const auto& [k, v] : t->members())
      if (v.is_number()) timings.add_row({HtmlCell::str(k), HtmlCell::num(v.number())});
  if (const JsonValue* rss = s.find("peak_rss_bytes"); rss && rss->is_number())
    timings.add_row({HtmlCell::str("peak RSS (MiB)"), HtmlCell::num(rss->number() / (1024.0 * 1024.0))});
  HtmlTable rules(id + "-rule-labels", "Rules: short label (parameters at their defaults left out) and canonical spec",
                  {"label", "spec (metrics.csv)"});
  const Labels L(out.rules);
  for (const auto& r : out.rules) rules.add_row({HtmlCell::str(L(r)), HtmlCell::str(r)});
  // One visible line with the essentials; the full tables fold out.
  std::string line;
  if (const JsonValue* t = s.find("trace"))
    line += t->get_string("num_layers", "?") + " layers × " + t->get_string("num_heads", "?") + " heads (" +
            t->get_string("num_kv_heads", "?") + " KV), head_dim " + t->get_string("head_dim", "?") + ", " +
            t->get_string("seq_len", "?") + " positions";
  if (const JsonValue* pr = s.find("protocol"))
    line += "; compression " + pr->get_string("compression_point", "?") + " at n_c = " + pr->get_string("n_c", "?") +
            ", window " + pr->get_string("window", "?") + ", " + pr->get_string("n_eval_queries", "?") + " evaluation queries";
  line += "; perturbation " + std::string(s.get_string("projected", "") == "true" ? "through o_proj" : "on head outputs");
  if (const JsonValue* t = s.find("timings"); t && t->find("total_seconds"))
    line += "; replay took " + display_number(t->get_number("total_seconds", 0)) + " s";
  line += "; kvsim " + s.get_string("kvsim_version", "?") + " (" + s.get_string("isa", "?") + ", " +
          s.get_string("threads", "?") + " threads)";
  o += p(html_escape(line));
  o += "<details><summary>trace, protocol, versions, timings and rule specs</summary><div class=\"plots\">" +
       meta.render() + "<div>" + timings.render() + rules.render() + "</div></div></details>";
  return o;
}

// ---------------------------------------------------------------- bound vs actual

std::string bound_vs_actual(const ReplayOutput& out, const std::string& id) {
  std::string o = h(3, "Bound vs actual", id + "-bounds");
  o += p("Each point is one (rule, budget, layer, head) head row: the measured L1 perturbation pert_l1 "
         "against CriticalKV's bound θ (bound_critical) and against the per-head Ada-KV bound 2(1−F)·max ν "
         "(bound_ada). Every point must lie on or below the dashed y = x line; the distance below it is how loose "
         "the bound is. θ is never looser than the Ada-KV bound.");
  const Labels L(out.rules);
  Plot crit(600, 420), ada(600, 420);
  crit.title("measured vs CriticalKV bound θ").xlabel("bound_critical").ylabel("pert_l1 (measured)");
  ada.title("measured vs Ada-KV bound").xlabel("bound_ada").ylabel("pert_l1 (measured)");
  for (Plot* pl : {&crit, &ada}) pl->xscale(Scale::log).yscale(Scale::log).same_ranges().identity_line();
  int color = 0;
  std::vector<std::string> facets;  // one small panel per rule: no rule hidden behind another
  for (const auto& rule : out.rules) {
    std::vector<double> bc, ba, pert;
    for (const auto& r : out.rows)
      if (r.rule == rule && r.head >= 0 && r.eval == out.eval) {
        bc.push_back(r.bound_critical);
        ba.push_back(r.bound_ada);
        pert.push_back(r.pert_l1);
      }
    crit.scatter(L(rule), bc, pert, svg::pen(color));
    ada.scatter(L(rule), ba, pert, svg::pen(color));
    Plot facet(290, 250);
    facet.title(L(rule)).xlabel("bound_critical").ylabel("pert_l1").xscale(Scale::log).yscale(Scale::log)
        .same_ranges().identity_line().scatter(L(rule), bc, pert, svg::pen(color));
    facets.push_back(facet.render());
    ++color;
  }
  o += plots({crit.render(), ada.render()}) + dropped_note(crit);
  if (out.rules.size() > 1)
    o += p("The same points as the left plot, one panel per rule (measured against θ; nothing drawn over "
           "another rule's points):") + plots(facets);

  // Tightness: ratio measured / bound per layer, points jittered by head.
  Plot ratio(600, 380);
  ratio.title("tightness pert_l1 / bound_critical per layer").xlabel("layer").integer_x().ylabel("measured / θ").yscale(Scale::log);
  const auto ratios = tightness_ratios(out, true);
  std::vector<double> xs, ys;
  for (std::size_t li = 0; li < out.layers.size(); ++li)
    for (std::size_t k = 0; k < ratios[li].size(); ++k) {
      xs.push_back(out.layers[li] + 0.6 * ((static_cast<double>(k % 23) / 22.0) - 0.5));
      ys.push_back(ratios[li][k]);
    }
  ratio.scatter("head rows (all rules and budgets)", xs, ys, svg::palette(0));
  std::vector<double> hx(out.layers.size()), hy(out.layers.size());
  const auto tight = layer_tightness(out);
  for (std::size_t i = 0; i < tight.size(); ++i) {
    hx[i] = tight[i].layer;
    hy[i] = tight[i].median_critical;
  }
  ratio.line("median", hx, hy, "#d62728");
  Plot ratio_ada(600, 380);
  ratio_ada.title("tightness pert_l1 / bound_ada per layer").xlabel("layer").integer_x().ylabel("measured / Ada-KV bound").yscale(Scale::log);
  const auto ratios_ada = tightness_ratios(out, false);
  xs.clear();
  ys.clear();
  for (std::size_t li = 0; li < out.layers.size(); ++li)
    for (std::size_t k = 0; k < ratios_ada[li].size(); ++k) {
      xs.push_back(out.layers[li] + 0.6 * ((static_cast<double>(k % 23) / 22.0) - 0.5));
      ys.push_back(ratios_ada[li][k]);
    }
  ratio_ada.scatter("head rows (all rules and budgets)", xs, ys, svg::palette(1));
  for (std::size_t i = 0; i < tight.size(); ++i) hy[i] = tight[i].median_ada;
  ratio_ada.line("median", hx, hy, "#d62728");
  o += plots({ratio.render(), ratio_ada.render()});

  HtmlTable t(id + "-tightness",
              "Tightness ratio pert_l1 / bound over head rows with a positive bound (all rules and budgets), per layer",
              {"layer", "n (θ)", "median /θ", "mean /θ", "max /θ", "rows over θ", "n (Ada)", "median /Ada", "mean /Ada",
               "max /Ada", "rows over Ada"});
  for (const auto& x : tight)
    t.add_row({HtmlCell::integer(x.layer), HtmlCell::integer(x.n_critical), HtmlCell::num(x.median_critical),
               HtmlCell::num(x.mean_critical), HtmlCell::num(x.max_critical), HtmlCell::integer(x.exceed_critical),
               HtmlCell::integer(x.n_ada), HtmlCell::num(x.median_ada), HtmlCell::num(x.mean_ada), HtmlCell::num(x.max_ada),
               HtmlCell::integer(x.exceed_ada)});
  o += t.render();
  return o;
}

// ---------------------------------------------------------------- rule comparison

std::string rule_comparison(const ReplayOutput& out, const std::string& id) {
  std::string o = h(3, "Rule comparison", id + "-rules");
  o += p("Layer rows (head = −1) averaged over layers, per rule and budget. The x axis is the mean nominal "
         "per-head budget in tokens (budget_tokens). Lower perturbation and higher retained mass are better.");
  const auto stats = rule_budget_stats(out);
  const Labels L(out.rules);
  Plot pert(600, 400), mass(600, 400);
  pert.title("perturbation vs budget").xlabel("budget_tokens (mean over layers)").ylabel("pert_l1 (layer, mean over layers)")
      .yscale(Scale::log);
  mass.title("retained attention mass vs budget").xlabel("budget_tokens (mean over layers)")
      .ylabel("retained_mass F (mean)");
  int color = 0;
  for (const auto& rule : out.rules) {
    std::vector<double> x, y, f;
    for (const auto& s : stats)
      if (s.rule == rule) {
        x.push_back(s.budget_tokens);
        y.push_back(s.pert_l1);
        f.push_back(s.retained_mass);
      }
    // Sort by budget so that the curves run left to right.
    std::vector<std::size_t> order(x.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return x[a] < x[b]; });
    std::vector<double> xs, ys, fs;
    for (auto i : order) { xs.push_back(x[i]); ys.push_back(y[i]); fs.push_back(f[i]); }
    pert.line(L(rule), xs, ys, svg::pen(color));
    mass.line(L(rule), xs, fs, svg::pen(color));
    ++color;
  }
  o += plots({pert.render(), mass.render()}) + dropped_note(pert);

  const JsonValue* srules = out.summary.find("rules");
  auto select_seconds = [&](const std::string& rule, const std::string& budget) -> double {
    if (!srules || !srules->is_array()) return std::nan("");
    for (const auto& r : srules->items())
      if (r.get_string("spec") == rule)
        if (const JsonValue* bs = r.find("budgets"))
          for (const auto& b : bs->items())
            if (b.get_string("budget") == budget) return b.get_number("select_seconds", std::nan(""));
    return std::nan("");
  };
  HtmlTable t(id + "-rule-budget", "Per rule and budget: means over layers of the layer rows (eval = " + out.eval + ")",
              {"rule", "budget", "layers", "budget_tokens", "kept_tokens", "retained_mass", "pert_l1", "rel_pert_l1",
               "bound_ada", "bound_critical", "select s (summary.json)"});
  for (const auto& s : stats)
    t.add_row({L.cell(s.rule), HtmlCell::str(s.budget), HtmlCell::integer(s.n_layers), HtmlCell::num(s.budget_tokens),
               HtmlCell::num(s.kept_tokens), HtmlCell::num(s.retained_mass), HtmlCell::num(s.pert_l1),
               HtmlCell::num(s.rel_pert_l1), HtmlCell::num(s.bound_ada), HtmlCell::num(s.bound_critical),
               HtmlCell::num(select_seconds(s.rule, s.budget))});
  o += t.render();

  // Ratio to the optimum (oracle_greedy, rules doc 2.19), when the output has it.
  const auto ratios = optimum_ratios(out);
  if (!ratios.empty()) {
    HtmlTable t2(id + "-optimum-ratio",
                 "Ratio to the optimum: each rule's mean layer perturbation over " + L(ratios.front().reference) +
                     "'s at the same budget (" + ratios.front().reference +
                     ": greedy descent on Σ‖Δ‖₂², rules doc 2.19). The greedy set is feasible, so the true optimum is "
                     "at most its value: a ratio here is a lower bound on the ratio to the optimum. Layers below: "
                     "layers where the rule's pert_l2 beats the greedy's.",
                 {"rule", "budget", "layers", "pert_l2", "ratio pert_l2", "median layer ratio pert_l2", "pert_l1",
                  "ratio pert_l1", "layers below"});
    for (const auto& x : ratios)
      t2.add_row({L.cell(x.rule), HtmlCell::str(x.budget), HtmlCell::integer(x.n_layers), HtmlCell::num(x.pert_l2),
                  HtmlCell::num(x.ratio_l2), HtmlCell::num(x.median_layer_ratio_l2), HtmlCell::num(x.pert_l1),
                  HtmlCell::num(x.ratio_l1), HtmlCell::integer(x.layers_below)});
    o += t2.render();
  }

  o += memory_section(out, id, L);  // quantization runs only
  o += decode_section(out, id, L);  // --protocol decode runs only
  o += questions_section(out, id, L);  // multi-question traces only

  // Budget-free ranking (summary.json rules[].auc): each rule's mean over its kept-fraction range.
  if (srules && srules->is_array()) {
    struct Auc {
      std::string rule;
      double from, to, rel, pert, mass;
      i64 points;
    };
    std::vector<Auc> aucs;
    for (const auto& r : srules->items())
      if (const JsonValue* a = r.find("auc"))
        aucs.push_back({r.get_string("spec"), a->get_number("from", std::nan("")), a->get_number("to", std::nan("")),
                        a->get_number("rel_pert_l1_mean", std::nan("")), a->get_number("pert_l1_mean", std::nan("")),
                        a->get_number("retained_mass_mean", std::nan("")),
                        static_cast<i64>(a->get_number("points", 0))});
    std::stable_sort(aucs.begin(), aucs.end(), [](const Auc& a, const Auc& b) {
      return (std::isnan(b.rel) && !std::isnan(a.rel)) || a.rel < b.rel;
    });
    if (!aucs.empty()) {
      HtmlTable a(id + "-budget-free",
                  "Budget-free ranking: each metric's mean over the rule's kept-fraction range (area under its "
                  "curve between the budgets, divided by the range; summary.json rules[].auc), best first. Compare "
                  "rules over the same range.",
                  {"rule", "kept fraction from", "to", "budgets", "rel_pert_l1", "pert_l1", "retained_mass"});
      for (const auto& x : aucs)
        a.add_row({L.cell(x.rule), HtmlCell::num(x.from), HtmlCell::num(x.to), HtmlCell::integer(x.points),
                   HtmlCell::num(x.rel), HtmlCell::num(x.pert), HtmlCell::num(x.mass)});
      o += a.render();
    }
  }

  // Budget-free per head: the distribution over heads of each head's mean over the kept fractions.
  const auto head_summaries = head_auc_summaries(head_aucs(out), out.rules);
  if (!head_summaries.empty()) {
    HtmlTable t3(id + "-budget-free-heads",
                 "Budget-free per head: for every (layer, head) head row, rel_pert_l1's mean over the rule's kept-fraction "
                 "range (trapezoids between its budgets, divided by the range), and its distribution over the heads: "
                 "fragile heads show in p90 and max, which a mean over heads hides",
                 {"rule", "heads", "median", "p90", "max", "worst layer", "worst head"});
    for (const auto& x : head_summaries)
      t3.add_row({L.cell(x.rule), HtmlCell::integer(x.heads), HtmlCell::num(x.median), HtmlCell::num(x.p90),
                  HtmlCell::num(x.max), HtmlCell::integer(x.worst_layer), HtmlCell::integer(x.worst_head)});
    o += t3.render();
  }

  // Heat maps rule x layer, one per budget (at most six).
  std::vector<std::string> maps;
  for (std::size_t bi = 0; bi < out.budgets.size() && bi < 6; ++bi) {
    svg::HeatMap hm;
    hm.title = "pert_l1 per layer, budget " + out.budgets[bi];
    hm.xlabel = "layer";
    hm.value_label = "pert_l1";
    hm.log_color = true;
    hm.reverse = true;  // dark = large perturbation
    for (int l : out.layers) hm.col_labels.push_back(std::to_string(l));
    for (const auto& rule : out.rules) {
      bool any = false;
      std::vector<double> row(out.layers.size(), std::nan(""));
      for (const auto& r : out.rows)
        if (r.rule == rule && r.budget == out.budgets[bi] && r.head == -1 && r.eval == out.eval) {
          row[static_cast<std::size_t>(std::lower_bound(out.layers.begin(), out.layers.end(), r.layer) - out.layers.begin())] =
              r.pert_l1;
          any = true;
        }
      if (!any) continue;
      hm.row_labels.push_back(L(rule));
      hm.values.insert(hm.values.end(), row.begin(), row.end());
    }
    if (!hm.row_labels.empty()) maps.push_back(hm.render());
  }
  if (out.budgets.size() > 6) o += p("Heat maps are shown for the first six budgets only.");
  o += plots(maps);
  return o;
}

// ---------------------------------------------------------------- CriticalKV (4.1)

std::string critical_section(const ReplayOutput& out, const std::string& id) {
  std::string o = h(3, "CriticalKV head win rate (rules doc 4.1)", id + "-critical");
  const auto wins = critical_win_rates(out);
  const Labels L(out.rules);
  if (wins.empty())
    return o + p("No pair (critical(X, …), X) at the same budget in this output: run both, e.g. "
                 "<code>--rules 'snapkv;critical(snapkv)'</code>.");
  o += p("For every rule critical(X, …) whose base X was replayed at the same budget: the fraction of (layer, head) "
         "whose measured pert_l1 is strictly lower with CriticalKV's selection (the paper reports over 92% of heads on "
         "Llama-3.1-8B). The cumulative advantage sums (pert_l1 of X − pert_l1 of critical(X)) over layers, layer rows.");
  HtmlTable all(id + "-critical-total", "Win rate over all layers and heads", {"rule", "base", "budget", "heads", "wins",
                                                                                 "ties", "win rate", "Σ pert_l1 rule",
                                                                                 "Σ pert_l1 base", "advantage"});
  HtmlTable per(id + "-critical-layers", "Win rate and cumulative advantage per layer",
                {"rule", "base", "budget", "layer", "heads", "wins", "ties", "win rate", "pert_l1 rule", "pert_l1 base",
                 "cumulative advantage"});
  Plot rate(600, 380), cum(600, 380);
  rate.title("head win rate of critical(X) over X").xlabel("layer").integer_x().ylabel("fraction of heads with lower pert_l1");
  cum.title("cumulative advantage over layers").xlabel("layer").integer_x().ylabel("Σ (pert_l1 X − pert_l1 critical(X))");
  int color = 0;
  std::vector<double> lx, ly, lc;
  std::string label;
  auto flush = [&]() {
    if (lx.empty()) return;
    rate.line(label, lx, ly, svg::pen(color));
    cum.line(label, lx, lc, svg::pen(color));
    ++color;
    lx.clear(); ly.clear(); lc.clear();
  };
  for (const auto& w : wins) {
    if (w.layer < 0) {
      flush();
      label = L(w.rule) + " @ " + w.budget;
      all.add_row({L.cell(w.rule), L.cell(w.base), HtmlCell::str(w.budget), HtmlCell::integer(w.heads),
                   HtmlCell::integer(w.wins), HtmlCell::integer(w.ties), HtmlCell::num(w.rate), HtmlCell::num(w.pert_rule),
                   HtmlCell::num(w.pert_base), HtmlCell::num(w.cumulative_advantage)});
      continue;
    }
    lx.push_back(w.layer);
    ly.push_back(w.rate);
    lc.push_back(w.cumulative_advantage);
    per.add_row({L.cell(w.rule), L.cell(w.base), HtmlCell::str(w.budget), HtmlCell::integer(w.layer),
                 HtmlCell::integer(w.heads), HtmlCell::integer(w.wins), HtmlCell::integer(w.ties), HtmlCell::num(w.rate),
                 HtmlCell::num(w.pert_rule), HtmlCell::num(w.pert_base), HtmlCell::num(w.cumulative_advantage)});
  }
  flush();
  rate.y_from_zero();
  o += all.render() + plots({rate.render(), cum.render()}) + per.render();
  return o;
}

// ---------------------------------------------------------------- Ada-KV (4.2)

std::string ada_section(const ReplayOutput& out, const std::string& id) {
  std::string o = h(3, "Ada-KV allocation effect (rules doc 4.2)", id + "-ada");
  const auto effects = ada_effects(out);
  const Labels L(out.rules);
  if (effects.empty())
    return o + p("No pair (ada(X, …), X) at the same budget in this output: run both, e.g. "
                 "<code>--rules 'snapkv;ada(snapkv)'</code>.");
  o += p("Uniform allocation (X) against Ada-KV's adaptive head-wise allocation (ada(X)) at the same total budget, per "
         "layer: Σ_h F_h (sum over heads of the retained attention mass), the Ada-KV bound ε = 2C·Σ_h(1−F_h) (layer rows' "
         "bound_ada) and the measured layer perturbation. Adaptive allocation should raise Σ F and lower the bound.");
  HtmlTable t(id + "-ada-layers", "Uniform (X) vs adaptive (ada(X)) per layer",
              {"rule", "base", "budget", "layer", "ΣF uniform", "ΣF adaptive", "bound uniform", "bound adaptive",
               "pert_l1 uniform", "pert_l1 adaptive"});
  std::map<std::pair<std::string, std::string>, std::vector<const AdaEffect*>> groups;
  std::vector<std::pair<std::string, std::string>> order;
  for (const auto& e : effects) {
    t.add_row({L.cell(e.rule), L.cell(e.base), HtmlCell::str(e.budget), HtmlCell::integer(e.layer),
               HtmlCell::num(e.sum_f_uniform), HtmlCell::num(e.sum_f_ada), HtmlCell::num(e.bound_uniform),
               HtmlCell::num(e.bound_ada), HtmlCell::num(e.pert_uniform), HtmlCell::num(e.pert_ada)});
    const auto key = std::make_pair(e.rule, e.budget);
    if (!groups.count(key)) order.push_back(key);
    groups[key].push_back(&e);
  }
  std::vector<std::string> svgs;
  int shown = 0;
  for (const auto& key : order) {
    if (shown++ >= 4) break;
    const auto& g = groups[key];
    std::vector<double> x, bu, ba, fu, fa;
    for (const AdaEffect* e : g) {
      x.push_back(e->layer);
      bu.push_back(e->bound_uniform);
      ba.push_back(e->bound_ada);
      fu.push_back(e->sum_f_uniform);
      fa.push_back(e->sum_f_ada);
    }
    Plot b(600, 360);
    b.title("Ada-KV bound per layer, budget " + key.second).xlabel("layer").integer_x().ylabel("ε = 2C·Σ(1−F)").yscale(Scale::log);
    b.line("uniform: " + L(g.front()->base), x, bu, svg::palette(0), true, true);
    b.line("adaptive: " + L(key.first), x, ba, svg::palette(1));
    Plot f(600, 360);
    f.title("Σ_h F_h per layer, budget " + key.second).xlabel("layer").integer_x().ylabel("sum of retained mass over heads");
    f.line("uniform: " + L(g.front()->base), x, fu, svg::palette(0), true, true);
    f.line("adaptive: " + L(key.first), x, fa, svg::palette(1));
    svgs.push_back(b.render());
    svgs.push_back(f.render());
  }
  o += plots(svgs) + t.render();

  // Per-head budget histograms: kept_tokens of the head rows.
  std::vector<std::string> hists;
  shown = 0;
  for (const auto& key : order) {
    if (shown++ >= 4) break;
    const auto ada_kept = head_kept_tokens(out, key.first, key.second);
    const auto uni_kept = head_kept_tokens(out, groups[key].front()->base, key.second);
    std::vector<double> both = ada_kept;
    both.insert(both.end(), uni_kept.begin(), uni_kept.end());
    double lo = *std::min_element(both.begin(), both.end()), hi = *std::max_element(both.begin(), both.end());
    if (hi - lo < 1) { lo -= 0.5; hi += 0.5; }
    const int bins = static_cast<int>(std::clamp(hi - lo + 1, 5.0, 30.0));
    const auto ha = svg::histogram(ada_kept, bins, lo, hi), hu = svg::histogram(uni_kept, bins, lo, hi);
    Plot hp(600, 340);
    hp.title("per-head kept tokens, budget " + key.second).xlabel("kept_tokens (head rows, all layers)").ylabel("heads")
        .y_from_zero();
    hp.bars("uniform: " + L(groups[key].front()->base), hu.left, hu.right, hu.count, svg::palette(0));
    hp.bars("adaptive: " + L(key.first), ha.left, ha.right, ha.count, svg::palette(1));
    hists.push_back(hp.render());
  }
  o += plots(hists);
  return o;
}

// ---------------------------------------------------------------- KeyDiff (4.3)

std::string keydiff_section(const AnalyzeOutput& a, const std::string& id) {
  std::string o = h(2, "KeyDiff premise (rules doc 4.3): " + a.dir, id);
  o += p("From <code>kvsim analyze</code>. Per (layer, query head): Spearman correlation between key distinctiveness "
         "−cos(k_j, μ) (μ = mean of the unit-normalised keys of the compressed span) and the mean attention key j "
         "receives, over the evaluation queries and over the observation window. KeyDiff's premise is a positive "
         "correlation here (distinctive keys get more attention); recall is the share of the attention top-N that "
         "KeyDiff's top-N also keeps.");
  if (const JsonValue* cmd = a.summary.find("command")) o += "<pre>" + html_escape(cmd->to_text()) + "</pre>";
  std::vector<std::string> evals;
  for (const auto& s : a.stats)
    if (std::find(evals.begin(), evals.end(), s.eval) == evals.end()) evals.push_back(s.eval);
  HtmlTable t(id + "-layers", "Means over the heads of each layer (key_stats.csv)",
              {"eval", "layer", "heads", "spearman mean", "spearman min", "spearman max", "heads with ρ > 0",
               "mass_frac_90 mean", "entropy_norm mean"});
  std::vector<std::string> svgs;
  int color = 0;
  Plot sp(600, 360);
  sp.title("Spearman ρ(distinctiveness, attention) per head").xlabel("layer").integer_x().ylabel("Spearman ρ");
  for (const auto& ev : evals) {
    std::vector<double> xs, ys, mx, my;
    for (int l : a.layers) {
      double sum = 0, lo = INFINITY, hi = -INFINITY, m90 = 0, ent = 0;
      long long n = 0, pos = 0, nfin = 0;
      for (const auto& s : a.stats) {
        if (s.layer != l || s.eval != ev) continue;
        ++n;
        m90 += s.mass_frac_90;
        ent += s.entropy_norm;
        if (!std::isfinite(s.spearman)) continue;
        ++nfin;
        sum += s.spearman;
        lo = std::min(lo, s.spearman);
        hi = std::max(hi, s.spearman);
        pos += s.spearman > 0;
        xs.push_back(l + 0.5 * ((s.head % 9) / 8.0 - 0.5) + (ev == "window" ? 0.06 : 0));
        ys.push_back(s.spearman);
      }
      if (n == 0) continue;
      const double mean = nfin ? sum / static_cast<double>(nfin) : std::nan("");
      mx.push_back(l);
      my.push_back(mean);
      t.add_row({HtmlCell::str(ev), HtmlCell::integer(l), HtmlCell::integer(n), HtmlCell::num(mean),
                 HtmlCell::num(nfin ? lo : std::nan("")), HtmlCell::num(nfin ? hi : std::nan("")), HtmlCell::integer(pos),
                 HtmlCell::num(m90 / static_cast<double>(n)), HtmlCell::num(ent / static_cast<double>(n))});
    }
    sp.scatter("heads, eval = " + ev, xs, ys, svg::palette(color));
    sp.line("layer mean, eval = " + ev, mx, my, svg::palette(color), true, true);
    ++color;
  }
  svgs.push_back(sp.render());
  // Heat map layer x head of the evaluation-query correlation.
  if (!evals.empty()) {
    svg::HeatMap hm;
    hm.title = "Spearman ρ, eval = " + evals.front();
    hm.xlabel = "query head";
    hm.value_label = "ρ";
    int heads = 0;
    for (const auto& s : a.stats) heads = std::max(heads, s.head + 1);
    for (int hh = 0; hh < heads; ++hh) hm.col_labels.push_back(std::to_string(hh));
    for (int l : a.layers) {
      hm.row_labels.push_back("layer " + std::to_string(l));
      std::vector<double> row(static_cast<std::size_t>(heads), std::nan(""));
      for (const auto& s : a.stats)
        if (s.layer == l && s.eval == evals.front()) row[static_cast<std::size_t>(s.head)] = s.spearman;
      hm.values.insert(hm.values.end(), row.begin(), row.end());
    }
    svgs.push_back(hm.render());
  }
  o += plots(svgs) + t.render();
  if (!a.recall.empty()) {
    HtmlTable r(id + "-recall", "Recall of the attention top-N by KeyDiff's top-N: mean over heads (key_recall.csv)",
                {"eval", "layer", "top", "top_tokens", "heads", "recall mean"});
    std::vector<std::tuple<std::string, int, std::string>> keys;
    std::map<std::tuple<std::string, int, std::string>, std::pair<double, long long>> acc;
    std::map<std::tuple<std::string, int, std::string>, long long> tokens;
    for (const auto& x : a.recall) {
      const auto k = std::make_tuple(x.eval, x.layer, x.top);
      if (!acc.count(k)) keys.push_back(k);
      acc[k].first += x.recall;
      acc[k].second += 1;
      tokens[k] = x.top_tokens;
    }
    for (const auto& k : keys)
      r.add_row({HtmlCell::str(std::get<0>(k)), HtmlCell::integer(std::get<1>(k)), HtmlCell::str(std::get<2>(k)),
                 HtmlCell::integer(tokens[k]), HtmlCell::integer(acc[k].second),
                 HtmlCell::num(acc[k].first / static_cast<double>(acc[k].second))});
    o += r.render();
  }
  return o;
}

// ---------------------------------------------------------------- CritiPrefill (4.4)

std::string prefill_section(const PrefillOutput& pf, const std::string& id) {
  std::string o = h(2, "CritiPrefill (rules doc 4.4): " + pf.dir, id);
  o += p("From <code>kvsim prefill</code>. Locality J(Δ): mean Jaccard overlap of the top-K key blocks of queries Δ "
         "apart (CritiPrefill's premise: adjacent queries need similar blocks, so one estimate per segment suffices). "
         "Block recall: share of each sparsified query's attention mass inside its segment's selected blocks. Pair "
         "reduction: dense attention pairs / sparse pairs, the CPU analogue of the speed-up; bench.json, when present, "
         "holds the measured kernel speed-up.");
  if (const JsonValue* cmd = pf.summary.find("command")) o += "<pre>" + html_escape(cmd->to_text()) + "</pre>";
  HtmlTable facts(id + "-summary", "Configuration and counts (summary.json)", {"field", "value"});
  for (const char* group : {"config", "counts"})
    if (const JsonValue* g = pf.summary.find(group))
      for (const auto& [k, v] : g->members())
        if (!v.is_object() && !v.is_array())
          facts.add_row({HtmlCell::str(std::string(group) + "." + k),
                         v.is_number() ? HtmlCell::num(v.number()) : HtmlCell::str(v.to_text())});
  HtmlTable variants(id + "-variants", "Means over the sparse layers per fusion variant (summary.json)",
                     {"fusion", "sparse layers", "retained_mass", "pert_l1", "rel_pert_l2", "block_recall",
                      "pair_reduction"});
  if (const JsonValue* vs = pf.summary.find("variants"))
    for (const auto& v : vs->items())
      variants.add_row({HtmlCell::str(v.get_string("fusion")), HtmlCell::num(v.get_number("sparse_layers", NAN)),
                        HtmlCell::num(v.get_number("retained_mass_mean", NAN)), HtmlCell::num(v.get_number("pert_l1_mean", NAN)),
                        HtmlCell::num(v.get_number("rel_pert_l2_mean", NAN)),
                        HtmlCell::num(v.get_number("block_recall_mean", NAN)),
                        HtmlCell::num(v.get_number("pair_reduction", NAN))});
  o += "<div class=\"plots\">" + facts.render() + variants.render() + "</div>";

  std::vector<std::string> svgs;
  // Locality: mean over heads of J(delta), one curve per layer.
  if (const CsvTable* loc = pf.table("locality.csv")) {
    const auto cl = loc->column("layer"), cd = loc->column("delta"), cj = loc->column("jaccard"), cp = loc->column("pairs");
    std::map<long long, std::map<long long, std::pair<double, int>>> acc;  // layer -> delta -> (sum, heads)
    for (std::size_t r = 0; r < loc->rows(); ++r) {
      if (loc->cell(r, cj).empty() || loc->integer(r, cp) == 0) continue;
      auto& a = acc[loc->integer(r, cl)][loc->integer(r, cd)];
      a.first += loc->number(r, cj);
      a.second += 1;
    }
    Plot pl(600, 380);
    pl.title("locality of query criticality J(Δ)").xlabel("Δ (queries apart)").ylabel("Jaccard of top-K block sets")
        .xscale(Scale::log).y_from_zero();
    // Table: layers x powers-of-two distances.
    std::set<long long> deltas;
    for (const auto& [layer, by_delta] : acc)
      for (const auto& [d, a] : by_delta)
        if ((d & (d - 1)) == 0) deltas.insert(d);
    std::vector<std::string> headers = {"layer"};
    for (long long d : deltas) headers.push_back("J(" + std::to_string(d) + ")");
    HtmlTable t(id + "-locality", "J(Δ): mean over heads of locality.csv's jaccard (rows with pairs > 0)", headers);
    int color = 0;
    for (const auto& [layer, by_delta] : acc) {
      std::vector<double> x, y;
      std::vector<HtmlCell> row = {HtmlCell::integer(layer)};
      for (const auto& [d, a] : by_delta) {
        x.push_back(static_cast<double>(d));
        y.push_back(a.first / a.second);
      }
      for (long long d : deltas) {
        const auto it = by_delta.find(d);
        row.push_back(it == by_delta.end() ? HtmlCell::str("") : HtmlCell::num(it->second.first / it->second.second));
      }
      t.add_row(row);
      pl.line("layer " + std::to_string(layer), x, y, svg::pen(color++), false);
    }
    // The shuffled baseline (summary.json, rules doc 4.4 a): J of random far query pairs.
    const JsonValue* locality = pf.summary.find("locality");
    const double shuffled = locality ? locality->get_number("shuffled_mean", NAN) : NAN;
    if (std::isfinite(shuffled) && !deltas.empty()) {
      const double lo = 1, hi = static_cast<double>(*deltas.rbegin());
      pl.line("shuffled pairs", {lo, hi}, {shuffled, shuffled}, "#555", false, true);
    }
    svgs.push_back(pl.render());
    o += plots(svgs) + t.render();
    svgs.clear();
  }
  // Layer rows of metrics.csv per fusion variant; dense layers have empty metric cells.
  if (const CsvTable* m = pf.table("metrics.csv")) {
    const auto cl = m->column("layer"), ch = m->column("head"), cf = m->column("fusion"), cn = m->column("n_sparse_queries"),
               cF = m->column("retained_mass"), cp1 = m->column("pert_l1"), cr2 = m->column("rel_pert_l2"),
               cb = m->column("block_recall"), cpr = m->column("pair_reduction");
    HtmlTable t(id + "-layers", "Layer rows (head −1) of metrics.csv; empty cells: the layer runs dense",
                {"layer", "fusion", "sparse queries", "retained_mass", "pert_l1", "rel_pert_l2", "block_recall",
                 "pair_reduction"});
    std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> recall;
    auto num_or_dense = [&](std::size_t r, std::size_t c) {
      return m->cell(r, c).empty() ? HtmlCell::str("dense") : HtmlCell::num(m->number(r, c));
    };
    for (std::size_t r = 0; r < m->rows(); ++r) {
      if (m->integer(r, ch) != -1) continue;
      t.add_row({HtmlCell::integer(m->integer(r, cl)), HtmlCell::str(m->cell(r, cf)), HtmlCell::integer(m->integer(r, cn)),
                 num_or_dense(r, cF), num_or_dense(r, cp1), num_or_dense(r, cr2), num_or_dense(r, cb), num_or_dense(r, cpr)});
      if (!m->cell(r, cb).empty()) {
        recall[m->cell(r, cf)].first.push_back(static_cast<double>(m->integer(r, cl)));
        recall[m->cell(r, cf)].second.push_back(m->number(r, cb));
      }
    }
    Plot pl(600, 360);
    pl.title("segment-estimate block recall per layer").xlabel("layer").integer_x().ylabel("block_recall (layer row)").y_from_zero();
    int color = 0;
    for (const auto& [fusion, xy] : recall) pl.line("fusion " + fusion, xy.first, xy.second, svg::palette(color++));
    svgs.push_back(pl.render());
    o += plots(svgs) + t.render();
    svgs.clear();
  }
  // Measured kernel speed-up (kvsim prefill --bench --json DIR/bench.json).
  if (const JsonValue* lengths = pf.bench.find("lengths"); lengths && lengths->is_array()) {
    HtmlTable t(id + "-bench", "Measured block-sparse vs dense prefill kernel (bench.json)",
                {"n", "dense s", "sparse s", "estimate s", "speed-up", "speed-up incl. estimate", "ideal pair reduction"});
    std::vector<double> n, sp, ideal;
    for (const auto& r : lengths->items()) {
      t.add_row({HtmlCell::num(r.get_number("n", NAN)), HtmlCell::num(r.get_number("dense_seconds", NAN)),
                 HtmlCell::num(r.get_number("sparse_seconds", NAN)), HtmlCell::num(r.get_number("estimate_seconds", NAN)),
                 HtmlCell::num(r.get_number("speedup", NAN)), HtmlCell::num(r.get_number("speedup_with_estimate", NAN)),
                 HtmlCell::num(r.get_number("ideal_pair_reduction", NAN))});
      n.push_back(r.get_number("n", NAN));
      sp.push_back(r.get_number("speedup", NAN));
      ideal.push_back(r.get_number("ideal_pair_reduction", NAN));
    }
    Plot pl(600, 360);
    pl.title("prefill speed-up vs prompt length").xlabel("prompt tokens n").ylabel("dense time / sparse time")
        .xscale(Scale::log).y_from_zero();
    pl.line("measured kernel speed-up", n, sp, svg::palette(0));
    pl.line("ideal (pair reduction)", n, ideal, svg::palette(1), true, true);
    o += plots({pl.render()}) + t.render();
  }
  return o;
}

}  // namespace

// ---------------------------------------------------------------- sweeps

namespace {

std::string sweep_summary(const SweepOutput& s, const std::string& id) {
  std::string o;
  const JsonValue& j = s.sweep;
  o += "<pre>" + html_escape(j.get_string("command", "(command not recorded)")) + "</pre>";
  long long failed = 0;
  for (const auto& t : s.traces) failed += t.status != "ok";
  o += p(html_escape(std::to_string(s.traces.size()) + " traces (" + std::to_string(failed) + " failed), " +
                     j.get_string("ranks", "?") + " process(es), " + display_number(j.get_number("wall_seconds", NAN)) +
                     " s wall, " + j.get_string("resumed_units", "0") + " unit(s) resumed from an earlier run"));
  HtmlTable traces(id + "-traces", "Traces of the study (sweep.json)", {"trace", "status", "units", "seconds", "error"});
  for (const auto& t : s.traces)
    traces.add_row({HtmlCell::abbrev(t.label, t.path), HtmlCell::str(t.status), HtmlCell::integer(t.units),
                    HtmlCell::num(t.seconds), HtmlCell::str(t.error)});
  std::vector<std::string> rules;
  const auto stats = cross_trace_stats(s);
  for (const auto& c : stats)
    if (std::find(rules.begin(), rules.end(), c.rule) == rules.end()) rules.push_back(c.rule);
  const Labels L(rules);
  o += h(3, "Across traces", id + "-cross");
  o += p("Per model, rule and budget, the spread over that model's traces of each trace's mean over layers (layer "
         "rows), and of its bound tightness: the median over head rows of pert_l1 / bound_critical (1 = the bound is "
         "attained). Traces of different models are never averaged together; the plots use rel_pert_l1 (the "
         "perturbation over the norm of the full-attention output), which is comparable across models, and the "
         "budgets as typed.");
  std::vector<std::string> models;
  for (const auto& c : stats)
    if (std::find(models.begin(), models.end(), c.model) == models.end()) models.push_back(c.model);
  const std::string axis = budget_axis(stats);
  std::string figures;
  for (const auto& model : models) {
    Plot pert(600, 400), tight(600, 400);
    // The model goes in a heading: plot titles stay short enough to show whole.
    pert.title("relative perturbation (dotted: min, max over traces)").xlabel(axis)
        .ylabel("rel_pert_l1 (trace mean over layers)").yscale(Scale::log);
    tight.title("CriticalKV bound tightness").xlabel(axis).ylabel("median pert_l1 / bound_critical").y_from_zero();
    int color = 0;
    for (const auto& rule : rules) {
      std::vector<const CrossTraceStats*> mine;
      for (const auto& c : stats)
        if (c.rule == rule && c.model == model) mine.push_back(&c);
      std::sort(mine.begin(), mine.end(), [](auto a, auto b) { return a->budget_x < b->budget_x; });
      std::vector<double> x, m, lo, hi, t;
      for (const auto* c : mine) {
        x.push_back(c->budget_x);
        m.push_back(c->rel_pert_l1_mean);
        lo.push_back(c->rel_pert_l1_min);
        hi.push_back(c->rel_pert_l1_max);
        t.push_back(c->tightness_mean);
      }
      // min and max: dotted, unmarked and out of the legend (one entry per rule).
      const svg::Pen range{svg::pen(color).color, false, true};
      pert.line(L(rule), x, m, svg::pen(color));
      pert.line("", x, lo, range, false);
      pert.line("", x, hi, range, false);
      tight.line(L(rule), x, t, svg::pen(color));
      ++color;
    }
    int traces = 0;
    for (const auto& c : stats)
      if (c.model == model) traces = std::max(traces, c.traces);
    figures += "<h4>" + html_escape(model) + ": means over its " + std::to_string(traces) + " trace(s)</h4>" +
               plots({pert.render(), tight.render()}) + dropped_note(pert);
  }
  o += figures;
  HtmlTable t(id + "-cross-table", "Per model, rule and budget over the finished traces",
              {"model", "rule", "budget", "traces", "budget_tokens", "rel_pert_l1 mean", "rel_pert_l1 std",
               "pert_l1 mean", "pert_l1 std", "pert_l1 min", "pert_l1 max", "retained_mass mean", "retained_mass std",
               "tightness mean", "tightness std"});
  for (const auto& c : stats)
    t.add_row({HtmlCell::str(c.model), L.cell(c.rule), HtmlCell::str(c.budget), HtmlCell::integer(c.traces),
               HtmlCell::num(c.budget_tokens_mean), HtmlCell::num(c.rel_pert_l1_mean), HtmlCell::num(c.rel_pert_l1_std),
               HtmlCell::num(c.pert_l1_mean), HtmlCell::num(c.pert_l1_std), HtmlCell::num(c.pert_l1_min),
               HtmlCell::num(c.pert_l1_max), HtmlCell::num(c.retained_mass_mean), HtmlCell::num(c.retained_mass_std),
               HtmlCell::num(c.tightness_mean), HtmlCell::num(c.tightness_std)});
  o += t.render() + traces.render();
  return o;
}

// A replay folder's sections (header, bounds, rules, CriticalKV, Ada-KV).
std::string replay_sections(const ReplayOutput& out, const std::string& id) {
  std::string body = replay_header(out, id);
  if (out.eval != "queries") body += p("No evaluation-query rows: the analyses below use the observation-window rows.");
  return body + bound_vs_actual(out, id) + rule_comparison(out, id) + critical_section(out, id) + ada_section(out, id);
}

}  // namespace

std::string render_html_report(const ReportInputs& in) {
  std::string body;
  std::string nav = "<nav>";
  for (std::size_t i = 0; i < in.sweeps.size(); ++i) {
    const SweepOutput& s = in.sweeps[i];
    const std::string id = "sweep" + std::to_string(i + 1);
    nav += "<a href=\"#" + id + "\">sweep " + std::to_string(i + 1) + "</a>";
    body += h(2, "Sweep " + std::to_string(i + 1) + ": " + std::to_string(s.traces.size()) + " traces (" + s.dir + ")", id);
    body += sweep_summary(s, id);
    const std::size_t shown = std::min<std::size_t>(s.replays.size(), static_cast<std::size_t>(std::max(0, in.max_sweep_sections)));
    if (shown < s.replays.size())
      body += p("Per-trace sections: the first " + std::to_string(shown) + " of " + std::to_string(s.replays.size()) +
                " finished traces (kvsim report --max-traces N shows more).");
    for (std::size_t k = 0; k < shown; ++k) {
      const std::string tid = id + "-t" + std::to_string(k + 1);
      body += h(2, "Sweep " + std::to_string(i + 1) + ", trace " + s.labels[k], tid);
      body += replay_sections(s.replays[k], tid);
    }
  }
  for (std::size_t i = 0; i < in.replays.size(); ++i) {
    const ReplayOutput& out = in.replays[i];
    const std::string id = "run" + std::to_string(i + 1);
    std::string model = "?";
    if (const JsonValue* t = out.summary.find("trace")) model = t->get_string("model", "?");
    const std::string title = "Replay " + std::to_string(i + 1) + ": " + model + " (" + out.dir + ")";
    nav += "<a href=\"#" + id + "\">replay " + std::to_string(i + 1) + "</a>";
    body += h(2, title, id);
    body += replay_sections(out, id);
  }
  for (std::size_t i = 0; i < in.closed_loops.size(); ++i) {
    const ClosedLoopOutput& c = in.closed_loops[i];
    const std::string id = "closed" + std::to_string(i + 1);
    nav += "<a href=\"#" + id + "\">closed loop " + std::to_string(i + 1) + "</a>";
    body += h(2, "Closed loop " + std::to_string(i + 1) + ": offline replay vs the model after a real eviction (" +
                     c.dir + ")", id);
    body += closed_loop_section(c, id);
    body += h(2, "Closed loop " + std::to_string(i + 1) + ": its offline replay", id + "-replay");
    body += replay_sections(c.replay, id + "-replay");
  }
  for (std::size_t i = 0; i < in.analyses.size(); ++i) {
    const std::string id = "keydiff" + std::to_string(i + 1);
    nav += "<a href=\"#" + id + "\">KeyDiff " + std::to_string(i + 1) + "</a>";
    body += keydiff_section(in.analyses[i], id);
  }
  for (std::size_t i = 0; i < in.prefills.size(); ++i) {
    const std::string id = "prefill" + std::to_string(i + 1);
    nav += "<a href=\"#" + id + "\">CritiPrefill " + std::to_string(i + 1) + "</a>";
    body += prefill_section(in.prefills[i], id);
  }
  nav += "</nav>";
  std::string html = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>kvsim report</title><style>";
  html += kStyle;
  html += "</style></head><body><h1>kvsim report</h1>";
  html += p("kvsim " + html_escape(in.version) + " — <code>" + html_escape(in.command) + "</code>");
  html += nav + body + "</body></html>\n";
  return html;
}

}  // namespace kvsim::report
