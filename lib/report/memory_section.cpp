#include "report/memory_section.h"

#include <algorithm>
#include <cstdlib>
#include <map>

#include "report/memory_pareto.h"

namespace kvsim::report {

namespace {

// Memory (cache_ratio) against pert_l2: one series per rule through its budgets, the front on top.
std::string memory_plot(const std::vector<MemoryPoint>& points, const std::vector<std::string>& rules,
                        const Labels& L, const std::string& title, int width, int height) {
  svg::Plot plot(width, height);
  plot.title(title).xlabel("cache_ratio (bytes / float16 full cache)").ylabel("pert_l2 (mean layer rows)")
      .yscale(svg::Scale::log);
  for (std::size_t i = 0; i < rules.size(); ++i) {
    std::vector<std::pair<double, double>> xy;
    for (const auto& p : points)
      if (p.rule == rules[i]) xy.push_back({p.cache_ratio, p.pert_l2});
    if (xy.empty()) continue;
    std::sort(xy.begin(), xy.end());
    std::vector<double> x, y;
    for (const auto& [a, b] : xy) x.push_back(a), y.push_back(b);
    plot.line(L(rules[i]), x, y, svg::pen(static_cast<int>(i)));
  }
  std::vector<std::pair<double, double>> front;
  for (const auto& p : points)
    if (p.front) front.push_back({p.cache_ratio, p.pert_l2});
  std::sort(front.begin(), front.end());
  std::vector<double> x, y;
  for (const auto& [a, b] : front) x.push_back(a), y.push_back(b);
  plot.line("Pareto front", x, y, "#000000", false, true);
  return plot.render() + dropped_note(plot);
}

}  // namespace

std::string memory_section(const ReplayOutput& out, const std::string& id, const Labels& L) {
  if (!has_quantization(out)) return "";
  const auto points = memory_points(out);
  if (points.empty()) return "";
  std::string o = h(3, "Memory against perturbation (quantization and eviction)", id + "-memory");
  o += p("Every (rule, budget) as its mean cache_ratio (bytes of the kept cache, codes, scales and zero points "
         "included, over the float16 full cache) and mean layer pert_l2 over the layers. The Pareto front holds the "
         "points no other point beats in both. Eviction rules sit at their kept fraction; quant(full, ...) is "
         "quantization alone; quant(rule, ...) combines both (rules doc 2.33).");
  o += plots({memory_plot(points, out.rules, L, "memory vs perturbation, all layers", 620, 380)});
  HtmlTable front(id + "-pareto-front", "The Pareto front over all layers, by memory",
                  {"rule", "budget", "kind", "cache_ratio", "pert_l2", "pert_l1"});
  std::vector<MemoryPoint> sorted = points;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const MemoryPoint& a, const MemoryPoint& b) { return a.cache_ratio < b.cache_ratio; });
  for (const auto& x : sorted)
    if (x.front)
      front.add_row({L.cell(x.rule), HtmlCell::str(x.budget), HtmlCell::str(x.kind), HtmlCell::num(x.cache_ratio),
                     HtmlCell::num(x.pert_l2), HtmlCell::num(x.pert_l1)});
  o += front.render();
  // At each memory level the run names (mem=F budgets): the best of each kind within F.
  HtmlTable best(id + "-memory-best",
                 "At each mem=F budget of the run: the lowest pert_l2 of each kind among the points whose "
                 "cache_ratio is at most F (any budget)",
                 {"memory", "kind", "rule", "budget", "cache_ratio", "pert_l2", "pert_l1"});
  bool any = false;
  for (const auto& budget : out.budgets) {
    if (budget.rfind("mem=", 0) != 0) continue;
    const double F = std::strtod(budget.c_str() + 4, nullptr);
    for (const char* kind : {"eviction", "quantization", "both"}) {
      const MemoryPoint* b = nullptr;
      for (const auto& x : points)
        if (x.kind == kind && x.cache_ratio <= F + 1e-9 && (!b || x.pert_l2 < b->pert_l2)) b = &x;
      if (!b) continue;
      any = true;
      best.add_row({HtmlCell::str(budget), HtmlCell::str(kind), L.cell(b->rule), HtmlCell::str(b->budget),
                    HtmlCell::num(b->cache_ratio), HtmlCell::num(b->pert_l2), HtmlCell::num(b->pert_l1)});
    }
  }
  if (any) o += best.render();
  std::vector<std::string> per_layer;
  for (int l : out.layers)
    per_layer.push_back(memory_plot(memory_points(out, l), out.rules, L, "layer " + std::to_string(l), 400, 280));
  o += "<details><summary>per layer (" + std::to_string(per_layer.size()) + " plots)</summary>" + plots(per_layer) +
       "</details>";
  return o;
}

}  // namespace kvsim::report
