#include "replay/metric_rows.h"

#include <algorithm>
#include <limits>

#include "core/table_io.h"

namespace kvsim {

namespace {

double mean(const std::vector<double>& v, std::size_t off, i64 n, i64 stride = 1) {
  double s = 0;
  for (i64 i = 0; i < n; ++i) s += v[off + i * stride];
  return n > 0 ? s / n : std::numeric_limits<double>::quiet_NaN();
}
double vmax(const std::vector<double>& v, std::size_t off, i64 n) {
  double m = -std::numeric_limits<double>::infinity();
  for (i64 i = 0; i < n; ++i) m = std::max(m, v[off + i]);
  return m;
}
double vmin(const std::vector<double>& v, std::size_t off, i64 n) {
  double m = std::numeric_limits<double>::infinity();
  for (i64 i = 0; i < n; ++i) m = std::min(m, v[off + i]);
  return m;
}

double head_kept(const Selection& sel, int h, int G) {
  return static_cast<double>(sel.kept_count(sel.mode == GqaMode::kv ? h / G : h));
}
double layer_kept(const Selection& sel, int H, int G) {
  double s = 0;
  for (int h = 0; h < H; ++h) s += head_kept(sel, h, G);
  return s / H;
}

std::string prefix(const RowKey& k, double kept, int head) {
  return csv_field(k.rule) + "," + csv_field(k.budget) + "," + std::to_string(k.budget_tokens) + "," +
         format_double(kept) + "," + std::to_string(k.layer) + "," + std::to_string(head) + "," + k.eval + ",";
}

std::string f(double v) { return format_double(v); }

}  // namespace

void write_metrics_header(std::ostream& out) {
  out << "rule,budget,budget_tokens,kept_tokens,layer,head,eval,n_queries,retained_mass,retained_mass_min,"
         "pert_l1,pert_l1_max,pert_l2,pert_l2_max,rel_pert_l1,rel_pert_l2,bound_ada,bound_critical\n";
}

void write_per_query_header(std::ostream& out) {
  out << "rule,budget,budget_tokens,kept_tokens,layer,head,eval,query_pos,retained_mass,"
         "pert_l1,pert_l2,rel_pert_l1,rel_pert_l2,bound_ada,bound_critical\n";
}

LayerAggregate write_metric_rows(std::ostream& out, const RowKey& key, const Selection& sel,
                                 const PerturbationResult& r, const std::vector<int>& heads, int G) {
  const i64 n = r.n_q;
  for (int h : heads) {
    const std::size_t o = r.at(h, 0);
    out << prefix(key, head_kept(sel, h, G), h) << n << "," << f(mean(r.F, o, n)) << "," << f(vmin(r.F, o, n))
        << "," << f(mean(r.l1, o, n)) << "," << f(vmax(r.l1, o, n)) << "," << f(mean(r.l2, o, n)) << ","
        << f(vmax(r.l2, o, n)) << "," << f(mean(r.rel_l1, o, n)) << "," << f(mean(r.rel_l2, o, n)) << ","
        << f(mean(r.bound_ada, o, n)) << "," << f(mean(r.theta, o, n)) << "\n";
  }
  LayerAggregate a;
  a.kept_tokens = layer_kept(sel, r.num_heads, G);
  a.retained_mass = mean(r.layer_F_mean, 0, n);
  a.pert_l1 = mean(r.layer_l1, 0, n);
  a.pert_l2 = mean(r.layer_l2, 0, n);
  a.rel_pert_l1 = mean(r.layer_rel_l1, 0, n);
  a.bound_ada = mean(r.layer_ada, 0, n);
  a.bound_critical = mean(r.layer_theta, 0, n);
  out << prefix(key, a.kept_tokens, -1) << n << "," << f(a.retained_mass) << "," << f(vmin(r.layer_F_min, 0, n))
      << "," << f(a.pert_l1) << "," << f(vmax(r.layer_l1, 0, n)) << "," << f(a.pert_l2) << ","
      << f(vmax(r.layer_l2, 0, n)) << "," << f(a.rel_pert_l1) << "," << f(mean(r.layer_rel_l2, 0, n)) << ","
      << f(a.bound_ada) << "," << f(a.bound_critical) << "\n";
  return a;
}

void write_per_query_rows(std::ostream& out, const RowKey& key, const Selection& sel, const PerturbationResult& r,
                          const std::vector<i64>& positions, const std::vector<int>& heads, int G) {
  for (int h : heads)
    for (i64 qi = 0; qi < r.n_q; ++qi) {
      const std::size_t k = r.at(h, qi);
      out << prefix(key, head_kept(sel, h, G), h) << positions[qi] << "," << f(r.F[k]) << "," << f(r.l1[k]) << ","
          << f(r.l2[k]) << "," << f(r.rel_l1[k]) << "," << f(r.rel_l2[k]) << "," << f(r.bound_ada[k]) << ","
          << f(r.theta[k]) << "\n";
    }
  const std::string p = prefix(key, layer_kept(sel, r.num_heads, G), -1);
  for (i64 qi = 0; qi < r.n_q; ++qi)
    out << p << positions[qi] << "," << f(r.layer_F_mean[qi]) << "," << f(r.layer_l1[qi]) << "," << f(r.layer_l2[qi])
        << "," << f(r.layer_rel_l1[qi]) << "," << f(r.layer_rel_l2[qi]) << "," << f(r.layer_ada[qi]) << ","
        << f(r.layer_theta[qi]) << "\n";
}

}  // namespace kvsim
