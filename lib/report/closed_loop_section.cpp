#include "report/closed_loop_section.h"

#include <algorithm>
#include <cmath>

#include "report/html_parts.h"

namespace kvsim::report {

namespace {

using svg::Plot;
using svg::Scale;

std::vector<std::string> rules_of(const ClosedLoopOutput& c) {
  std::vector<std::string> rules;
  for (const auto& r : c.runs)
    if (std::find(rules.begin(), rules.end(), r.rule) == rules.end()) rules.push_back(r.rule);
  return rules;
}

std::string scatter(const ClosedLoopOutput& c, const Labels& L, double ClosedLoopRun::*y, const std::string& title,
                    const std::string& ylabel) {
  Plot pl(620, 420);
  pl.title(title).xlabel("offline replay: mean layer pert_l1 = ||Δo W_o||₁").ylabel(ylabel).xscale(Scale::log)
      .yscale(Scale::log);
  int color = 0;
  for (const auto& rule : rules_of(c)) {
    std::vector<double> xs, ys;
    for (const auto& r : c.runs)
      if (r.rule == rule && r.mode != "blockwise") {
        xs.push_back(r.offline_pert_l1);
        ys.push_back(r.*y);
      }
    if (!xs.empty()) pl.scatter(L(rule), xs, ys, svg::pen(color++));
  }
  std::vector<double> bx, by;
  for (const auto& r : c.runs)
    if (r.mode == "blockwise") {
      bx.push_back(r.offline_pert_l1);
      by.push_back(r.*y);
    }
  if (!bx.empty()) pl.scatter("KeyDiff, true block-wise", bx, by, "#000000");
  return pl.render() + dropped_note(pl);
}

}  // namespace

std::string closed_loop_section(const ClosedLoopOutput& c, const std::string& id) {
  const JsonValue& d = c.doc;
  const Labels L(rules_of(c));
  std::string o = "<pre>" + html_escape(d.get_string("command", "(command not recorded)")) + "</pre>";
  const JsonValue* ref = d.find("reference");
  o += p(html_escape("model " + d.get_string("model", "?") + "; compression after " +
                     (ref ? display_number(ref->get_number("n_c", NAN)) : std::string("?")) + " tokens (" +
                     d.get_string("compression_point", "?") + "), " +
                     (ref ? display_number(ref->get_number("continuation", NAN)) : std::string("?")) +
                     " teacher-forced positions after it, " +
                     (ref ? display_number(ref->get_number("generated", NAN)) : std::string("?")) +
                     " free-running tokens; decode re-selection every " + d.get_string("evict_every", "?") + " token(s)"));
  o += p("How to read it: every point is one rule at one budget. The x axis is what the offline replay measures on the "
         "recorded queries (the change of the layer's attention output, mean over layers and evaluation queries); the "
         "y axis is what the model itself does when that rule's eviction is really applied to its KV cache: the mean "
         "next-token KL(full || evicted) over the teacher-forced continuation, and the relative drift of the last "
         "layer's hidden state. A rank correlation near 1 means the offline number orders rules the way the model's "
         "behaviour does; within a budget it says whether the offline ranking of rules at matched kept tokens holds. "
         "Black circles are KeyDiff's true block-wise prefill, drawn at the offline value of its simulation.");
  o += plots({scatter(c, L, &ClosedLoopRun::kl_mean, "closed-loop KL vs offline perturbation", "mean next-token KL"),
              scatter(c, L, &ClosedLoopRun::hidden_drift_last, "hidden-state drift vs offline perturbation",
                      "last-layer relative drift")});
  HtmlTable corr(id + "-correlation", "Spearman rank correlation, one-shot and decode runs (computed here from "
                                      "offline_vs_closed.csv)",
                 {"offline", "closed loop", "runs", "all runs", "within a budget (mean)"});
  for (const auto& rc : closed_loop_correlations(c))
    corr.add_row({HtmlCell::str(rc.offline), HtmlCell::str(rc.closed), HtmlCell::integer(rc.n), HtmlCell::num(rc.all),
                  HtmlCell::num(rc.within_budget)});
  o += corr.render();
  HtmlTable t(id + "-runs", "Per rule, budget and mode (offline_vs_closed.csv)",
              {"rule", "budget", "mode", "kept / head", "offline pert_l1", "offline bound_critical", "KL", "top-1 agreement",
               "Δ log-likelihood", "last-layer drift", "free-run agreement", "needle recall"});
  for (const auto& r : c.runs)
    t.add_row({L.cell(r.rule), HtmlCell::str(r.budget), HtmlCell::str(r.mode), HtmlCell::num(r.kept_tokens),
               HtmlCell::num(r.offline_pert_l1), HtmlCell::num(r.offline_bound_critical), HtmlCell::num(r.kl_mean),
               HtmlCell::num(r.token_agreement), HtmlCell::num(r.delta_logprob), HtmlCell::num(r.hidden_drift_last),
               HtmlCell::num(r.free_agreement), HtmlCell::num(r.needle_recall)});
  o += t.render();
  const JsonValue* gap = d.find("keydiff_gap");
  if (gap && gap->is_array() && !gap->items().empty()) {
    o += h(3, "KeyDiff: simulated vs true block-wise prefill", id + "-keydiff");
    o += p("The replay simulates KeyDiff's block-wise process on keys recorded with the full cache; the true process "
           "computes each block's keys after the earlier blocks were already cut back. Jaccard: overlap of the two "
           "kept sets at the end of the prompt (layer 0 is identical by construction: its keys do not depend on the "
           "cache).");
    HtmlTable g(id + "-keydiff-gap", "Simulated (one-shot replay of the block-wise set) vs true block-wise",
                {"rule", "budget", "KL simulated", "KL true", "drift simulated", "drift true", "kept-set Jaccard"});
    for (const auto& x : gap->items())
      g.add_row({L.cell(x.get_string("rule")), HtmlCell::str(x.get_string("budget")),
                 HtmlCell::num(x.get_number("kl_simulated", NAN)), HtmlCell::num(x.get_number("kl_true", NAN)),
                 HtmlCell::num(x.get_number("drift_simulated", NAN)), HtmlCell::num(x.get_number("drift_true", NAN)),
                 HtmlCell::num(x.get_number("jaccard_mean", NAN))});
    o += g.render();
  }
  return o;
}

}  // namespace kvsim::report
