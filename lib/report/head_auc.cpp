#include "report/head_auc.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "core/curve_mean.h"
#include "report/order_stats.h"

namespace kvsim::report {

std::vector<HeadAuc> head_aucs(const ReplayOutput& out) {
  std::vector<HeadAuc> result;
  double n_c = 0;
  if (const JsonValue* p = out.summary.find("protocol")) n_c = p->get_number("n_c", 0);
  if (!(n_c > 0)) return result;
  // (rule, layer, head) -> kept fraction -> (sum of rel_pert_l1, count)
  std::map<std::tuple<std::string, int, int>, std::map<double, std::pair<double, int>>> curves;
  for (const auto& r : out.rows) {
    if (r.head < 0 || r.eval != out.eval) continue;
    auto& point = curves[{r.rule, r.layer, r.head}][r.kept_tokens / n_c];
    point.first += r.rel_pert_l1;
    point.second += 1;
  }
  for (const auto& [key, curve] : curves) {
    if (curve.size() < 2) continue;
    HeadAuc a;
    std::tie(a.rule, a.layer, a.head) = key;
    std::vector<double> x, y;  // kept fraction, mean rel_pert_l1 at it
    for (const auto& [fraction, sum_count] : curve) {
      x.push_back(fraction);
      y.push_back(sum_count.first / sum_count.second);
    }
    a.from = x.front();
    a.to = x.back();
    a.rel_pert_l1 = trapezoid_mean(x, y);
    result.push_back(a);
  }
  return result;
}

std::vector<HeadAucSummary> head_auc_summaries(const std::vector<HeadAuc>& aucs, const std::vector<std::string>& rules) {
  std::vector<HeadAucSummary> out;
  for (const auto& rule : rules) {
    std::vector<double> v;
    HeadAucSummary s;
    s.rule = rule;
    for (const auto& a : aucs) {
      if (a.rule != rule) continue;
      v.push_back(a.rel_pert_l1);
      if (v.size() == 1 || a.rel_pert_l1 > s.max) {
        s.max = a.rel_pert_l1;
        s.worst_layer = a.layer;
        s.worst_head = a.head;
      }
    }
    if (v.empty()) continue;
    s.heads = static_cast<long long>(v.size());
    s.median = median(v);
    s.p90 = quantile(v, 0.9);
    out.push_back(s);
  }
  return out;
}

}  // namespace kvsim::report
