#include "prefill/prefill_output.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/output_folder.h"
#include "core/run_header.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "kernels/isa.h"
#include "trace/trace_summary.h"

namespace kvsim::prefill {

namespace {

std::string num(double v) { return format_double(v); }

// Fields of one metrics row; empty metrics when no query was sparsified (dense layers).
std::string metric_fields(const MetricSums& m, const LayerMetrics& lm) {
  std::ostringstream os;
  os << m.n;
  if (m.n == 0) {
    os << ",,,,,,,,,," << num(lm.pair_reduction) << "," << num(lm.kept_keys_mean);
    return os.str();
  }
  const double n = static_cast<double>(m.n);
  os << ',' << num(m.retained / n) << ',' << num(m.retained_min) << ',' << num(m.l1 / n) << ',' << num(m.l1_max) << ','
     << num(m.l2 / n) << ',' << num(m.l2_max) << ',' << num(m.rel_l1 / n) << ',' << num(m.rel_l2 / n) << ','
     << num(m.recall / n) << ',' << num(lm.pair_reduction) << ',' << num(lm.kept_keys_mean);
  return os.str();
}

}  // namespace

std::string metrics_csv(const PrefillRunResult& res) {
  std::ostringstream os;
  os << "layer,head,fusion,n_sparse_queries,retained_mass,retained_mass_min,pert_l1,pert_l1_max,pert_l2,pert_l2_max,"
        "rel_pert_l1,rel_pert_l2,block_recall,pair_reduction,kept_keys_mean\n";
  for (const auto& lm : res.metrics) {
    for (std::size_t h = 0; h < lm.heads.size(); ++h)
      os << lm.layer << ',' << h << ',' << lm.variant << ',' << metric_fields(lm.heads[h], lm) << '\n';
    os << lm.layer << ",-1," << lm.variant << ',' << metric_fields(lm.layer_row, lm) << '\n';
  }
  return os.str();
}

std::string locality_csv(const PrefillRunResult& res) {
  std::ostringstream os;
  os << "layer,head,delta,jaccard,pairs\n";
  for (const auto& ll : res.locality)
    for (const auto& c : ll.heads)
      for (std::size_t i = 0; i < c.jaccard.size(); ++i)
        if (c.pairs[i] > 0) os << ll.layer << ',' << c.head << ',' << i + 1 << ',' << num(c.jaccard[i]) << ',' << c.pairs[i] << '\n';
  return os.str();
}

std::string locality_shuffled_csv(const PrefillRunResult& res) {
  std::ostringstream os;
  os << "layer,head,jaccard,pairs\n";
  for (const auto& ll : res.locality)
    for (const auto& c : ll.heads)
      if (c.shuffled_pairs > 0) os << ll.layer << ',' << c.head << ',' << num(c.shuffled) << ',' << c.shuffled_pairs << '\n';
  return os.str();
}

double locality_mean_at(const PrefillRunResult& res, i64 delta, i64* heads) {
  double sum = 0;
  i64 cnt = 0;
  for (const auto& ll : res.locality)
    for (const auto& c : ll.heads)
      if (delta >= 1 && delta <= static_cast<i64>(c.pairs.size()) && c.pairs[delta - 1] > 0) {
        sum += c.jaccard[delta - 1];
        ++cnt;
      }
  if (heads) *heads = cnt;
  return cnt ? sum / cnt : std::nan("");
}

LocalityMeans locality_means(const PrefillRunResult& res) {
  LocalityMeans m;
  m.j1 = locality_mean_at(res, 1, &m.heads);
  double sum = 0;
  i64 cnt = 0;
  for (const auto& ll : res.locality)
    for (const auto& c : ll.heads)
      if (c.shuffled_pairs > 0) {
        sum += c.shuffled;
        ++cnt;
      }
  m.shuffled = cnt ? sum / cnt : std::nan("");
  return m;
}

std::vector<VariantMeans> variant_means(const PrefillRunResult& res) {
  std::vector<VariantMeans> out;
  for (const auto& lm : res.metrics) {
    if (lm.dense_layer || lm.layer_row.n == 0) continue;
    auto it = std::find_if(out.begin(), out.end(), [&](const VariantMeans& v) { return v.variant == lm.variant; });
    if (it == out.end()) {
      out.push_back({lm.variant});
      it = out.end() - 1;
    }
    const MetricSums& m = lm.layer_row;
    const double n = static_cast<double>(m.n);
    ++it->layers;
    it->retained += m.retained / n;
    it->retained_min = std::min(it->retained_min, m.retained_min);
    it->pert_l1 += m.l1 / n;
    it->pert_l2 += m.l2 / n;
    it->rel_l2 += m.rel_l2 / n;
    it->recall += m.recall / n;
    it->pair_reduction += lm.pair_reduction;
  }
  for (auto& v : out) {
    const double k = v.layers;
    v.retained /= k;
    v.pert_l1 /= k;
    v.pert_l2 /= k;
    v.rel_l2 /= k;
    v.recall /= k;
    v.pair_reduction /= k;
  }
  return out;
}

std::string summary_json(const PrefillRunResult& res, const PrefillRunOptions& opt, const std::string& command) {
  const TraceMeta& m = res.meta;
  const PrefillConfig& c = res.plan.config();
  Json j = run_header(command, kernels::isa_name(kernels::active_isa()));
  j["trace"] = trace_summary(m, m.path);
  j["config"] = {{"segment", c.segment},
                 {"block", c.block},
                 {"budget", c.budget},
                 {"top_k", c.top_k()},
                 {"threshold", c.threshold},
                 {"layer_skip", c.layer_skip},
                 {"fusion", std::string(opt.fusion_on && opt.fusion_off ? "both" : opt.fusion_on ? "on" : "off")},
                 {"fusion_rule", "layers <= 1 store their map; deeper layers 0.25 * fused(l-1) + 0.75 * current(l)"}};
  const SegmentPlan& p = res.plan;
  i64 early = 0;
  for (const auto& s : p.segments()) early += s.start < c.threshold;
  int sparse_layers = 0;
  for (int l = 0; l < m.num_layers; ++l) sparse_layers += l >= c.layer_skip;
  j["counts"] = {{"prompt_len", p.n()},
                 {"segments", p.num_segments()},
                 {"profiled_segments", p.num_profiled()},
                 {"dense_segments", p.num_dense_segments()},
                 {"dense_segments_below_threshold", early},
                 {"sparse_segments", p.num_sparse_segments()},
                 {"sparse_queries_per_layer", p.num_sparse_queries()},
                 {"sparse_layers", sparse_layers},
                 {"dense_layers", m.num_layers - sparse_layers},
                 {"kept_blocks_per_segment", c.top_k()},
                 {"kept_keys_per_segment", c.top_k() * c.block + c.segment},
                 {"pair_reduction_sparse_layer", p.pair_reduction()},
                 {"pair_reduction_sparsified_part", p.sparse_part_reduction()},
                 {"estimation_macs_per_head", p.estimation_macs(m.head_dim)}};
  j["projected"] = res.projected;
  const LocalityMeans lm = locality_means(res);
  j["locality"] = {{"method", "J(delta) = mean over sampled anchors i of Jaccard(top-K blocks of query i, of query i+delta), "
                              "block masses restricted to blocks entirely at or before i; anchors evenly spaced over "
                              "[(K+1)*block-1, n-2]; pairs with i+delta >= n skipped"},
                   {"shuffled_method", "mean over anchors i and " + std::to_string(kShuffledPartners) +
                                           " random partners j (uniform over [(K+1)*block-1, n-1] without i) of "
                                           "Jaccard(top-K blocks of i, of j), masses restricted to blocks entirely at or "
                                           "before min(i, j)"},
                   {"j1_mean", lm.j1},
                   {"shuffled_mean", lm.shuffled},
                   {"anchors_per_head", static_cast<i64>(res.anchors.size())},
                   {"max_delta", 2 * c.segment},
                   {"anchors", res.anchors}};
  j["variants"] = Json::array();
  for (const auto& v : variant_means(res))
    j["variants"].push_back({{"fusion", v.variant},
                             {"sparse_layers", v.layers},
                             {"retained_mass_mean", v.retained},
                             {"retained_mass_min", v.retained_min},
                             {"pert_l1_mean", v.pert_l1},
                             {"pert_l2_mean", v.pert_l2},
                             {"rel_pert_l2_mean", v.rel_l2},
                             {"block_recall_mean", v.recall},
                             {"pair_reduction", v.pair_reduction}});
  j["timings"] = {{"read_seconds", res.read_seconds},
                  {"estimate_seconds", res.estimate_seconds},
                  {"simulate_seconds", res.simulate_seconds},
                  {"locality_seconds", res.locality_seconds},
                  {"total_seconds", res.total_seconds}};
  j["peak_rss_bytes"] = static_cast<i64>(peak_rss_bytes());
  return json_text(j);
}

void write_prefill_outputs(OutputFolder& folder, const PrefillRunResult& res, const PrefillRunOptions& opt,
                           const std::string& command) {
  folder.publish({{"metrics.csv", metrics_csv(res)},
                  {"locality.csv", locality_csv(res)},
                  {"locality_shuffled.csv", locality_shuffled_csv(res)},
                  {"summary.json", summary_json(res, opt, command)}},
                 kPrefillOutputs);
}

std::string bench_json(const std::vector<BenchRow>& rows, const BenchOptions& opt, const std::string& command) {
  Json j = run_header(command, kernels::isa_name(kernels::active_isa()));
  j["config"] = {{"segment", opt.cfg.segment},     {"block", opt.cfg.block},
                 {"budget", opt.cfg.budget},       {"threshold", opt.cfg.threshold},
                 {"num_heads", opt.num_heads},     {"num_kv_heads", opt.num_kv_heads},
                 {"head_dim", opt.head_dim},       {"repeats", opt.repeats},
                 {"data", "uniform random [-1, 1), one layer"}};
  j["lengths"] = Json::array();
  for (const auto& r : rows)
    j["lengths"].push_back({{"n", r.n},
                            {"dense_seconds", r.dense_seconds},
                            {"sparse_seconds", r.sparse_seconds},
                            {"estimate_seconds", r.estimate_seconds},
                            {"speedup", r.speedup},
                            {"speedup_with_estimate", r.speedup_with_estimate},
                            {"ideal_pair_reduction", r.ideal_reduction},
                            {"speedup_over_ideal", r.speedup_over_ideal},
                            {"dense_gflops", r.dense_gflops},
                            {"sparse_gflops", r.sparse_gflops},
                            {"sgemm_gflops", r.sgemm_gflops},
                            {"dense_fraction_of_sgemm", r.dense_fraction_of_sgemm},
                            {"dense_segment_max_abs_diff", r.max_abs_diff},
                            {"dense_cpu_seconds", r.dense_cpu_seconds},
                            {"sparse_cpu_seconds", r.sparse_cpu_seconds},
                            {"speedup_cpu", r.speedup_cpu},
                            {"dense_gflops_per_cpu_second", r.dense_gflops_per_cpu_second},
                            {"sgemm_gflops_per_cpu_second", r.sgemm_gflops_per_cpu_second},
                            {"dense_fraction_of_sgemm_cpu", r.dense_fraction_of_sgemm_cpu}});
  j["peak_rss_bytes"] = static_cast<i64>(peak_rss_bytes());
  return json_text(j);
}

}  // namespace kvsim::prefill
