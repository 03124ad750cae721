#include "report/decode_section.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>

#include "core/splitmix.h"
#include "replay/metric_columns.h"
#include "report/csv_reader.h"

namespace kvsim::report {

namespace {

// Layer-row pert_l1 of one (rule, budget): [layer][step] (NaN where a query is missing).
using Curves = std::map<std::pair<std::string, std::string>, std::map<int, std::map<long long, double>>>;

Curves read_curves(const std::string& path, long long n0) {
  const CsvTable t = CsvTable::read(path);
  const auto column = [&](std::string_view name) { return declared_column(t, per_query_schema(), name); };
  const auto c_rule = column("rule"), c_budget = column("budget"), c_layer = column("layer"), c_head = column("head"),
             c_eval = column("eval"), c_pos = column("query_pos"), c_p1 = column("pert_l1");
  Curves out;
  for (std::size_t i = 0; i < t.rows(); ++i) {
    if (t.integer(i, c_head) != -1 || t.cell(i, c_eval) != "queries") continue;
    out[{t.cell(i, c_rule), t.cell(i, c_budget)}][static_cast<int>(t.integer(i, c_layer))]
       [t.integer(i, c_pos) - n0] = t.number(i, c_p1);
  }
  return out;
}

struct Interval {
  double mean = NAN, lo = NAN, hi = NAN;
};

// Mean over layers of each layer's mean over the steps [a, b), with a 95% percentile bootstrap
// interval over layers (2,000 resamples, splitmix64: the same numbers on every run).
Interval over_layers(const std::map<int, std::map<long long, double>>& layers, long long a, long long b) {
  std::vector<double> per_layer;
  for (const auto& [l, steps] : layers) {
    double s = 0;
    int n = 0;
    for (auto it = steps.lower_bound(a); it != steps.end() && it->first < b; ++it) s += it->second, ++n;
    if (n > 0) per_layer.push_back(s / n);
  }
  Interval r;
  if (per_layer.empty()) return r;
  const std::size_t n = per_layer.size();
  double total = 0;
  for (double x : per_layer) total += x;
  r.mean = total / static_cast<double>(n);
  std::vector<double> boot;
  std::uint64_t z = 0x5eedull;
  for (int k = 0; k < 2000; ++k) {
    double s = 0;
    for (std::size_t i = 0; i < n; ++i) s += per_layer[(z = splitmix64(z)) % n];
    boot.push_back(s / static_cast<double>(n));
  }
  std::sort(boot.begin(), boot.end());
  r.lo = boot[50];
  r.hi = boot[1949];
  return r;
}

std::string with_interval(const Interval& x) {
  if (!std::isfinite(x.mean)) return "–";
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.4g [%.4g, %.4g]", x.mean, x.lo, x.hi);
  return buf;
}

}  // namespace

std::string decode_section(const ReplayOutput& out, const std::string& id, const Labels& L) {
  const JsonValue* protocol = out.summary.find("protocol");
  if (!protocol || protocol->get_string("name") != "decode") return "";
  const long long n0 = static_cast<long long>(protocol->get_number("n_c", 0));
  const long long every = static_cast<long long>(protocol->get_number("every", 0));
  std::string o = h(3, "Compression while generating (decode protocol)", id + "-decode");
  o += p("The cache is cut back to the budget every " + std::to_string(every) + " positions after n_c = " +
         std::to_string(n0) + " (start " + protocol->get_string("decode_start") + ", admission " +
         protocol->get_string("admission", "evict") +
         ", rules doc 1.9); each evaluation query is measured against full attention over every token up to it. "
         "The curves show how the error of the layer output accumulates over the generation.");
  const std::string path = out.dir + "/metrics_per_query.csv";
  if (!std::filesystem::exists(path)) {
    o += p("metrics_per_query.csv is absent: replay with --per-query to see the perturbation over generation steps.");
    return o;
  }
  const Curves curves = read_curves(path, n0);
  long long last = 0;
  for (const auto& [key, layers] : curves)
    for (const auto& [l, steps] : layers)
      if (!steps.empty()) last = std::max(last, steps.rbegin()->first + 1);
  std::vector<std::string> svgs;
  for (const auto& budget : out.budgets) {
    svg::Plot plot(620, 380);
    plot.title("budget " + budget + ": pert_l1 over the generation (mean over layers)")
        .xlabel("evaluation step (position - n_c)").ylabel("pert_l1 (layer rows)").yscale(svg::Scale::log);
    for (std::size_t r = 0; r < out.rules.size(); ++r) {
      const auto it = curves.find({out.rules[r], budget});
      if (it == curves.end()) continue;
      std::map<long long, std::pair<double, int>> mean;
      for (const auto& [l, steps] : it->second)
        for (const auto& [s, v] : steps) mean[s].first += v, ++mean[s].second;
      std::vector<double> x, y;
      for (const auto& [s, sum] : mean) x.push_back(static_cast<double>(s)), y.push_back(sum.first / sum.second);
      plot.line(L(out.rules[r]), x, y, svg::pen(static_cast<int>(r)), false);
    }
    svgs.push_back(plot.render() + dropped_note(plot));
  }
  o += plots(svgs);
  // Quarters of the evaluation steps: where the error stands early and late.
  std::vector<std::pair<long long, long long>> quarters;
  for (int k = 0; k < 4; ++k) quarters.push_back({last * k / 4, last * (k + 1) / 4});
  std::vector<std::string> cols = {"rule", "budget"};
  for (const auto& [a, b] : quarters) cols.push_back("steps " + std::to_string(a) + "–" + std::to_string(b - 1));
  cols.push_back("last / first quarter");
  HtmlTable t(id + "-decode-steps",
              "pert_l1 (layer rows) over each quarter of the evaluation steps: the mean over layers of each layer's "
              "mean, [95% bootstrap interval over layers]",
              cols);
  for (const auto& budget : out.budgets)
    for (const auto& rule : out.rules) {
      const auto it = curves.find({rule, budget});
      if (it == curves.end()) continue;
      std::vector<HtmlCell> row = {L.cell(rule), HtmlCell::str(budget)};
      std::vector<Interval> q;
      for (const auto& [a, b] : quarters) {
        q.push_back(over_layers(it->second, a, b));
        row.push_back(HtmlCell::str(with_interval(q.back())));
      }
      row.push_back(HtmlCell::num(q.front().mean > 0 ? q.back().mean / q.front().mean : NAN));
      t.add_row(std::move(row));
    }
  o += t.render();
  return o;
}

}  // namespace kvsim::report
