#include "prefill/prefill_output.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/output_path.h"
#include "core/run_header.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "kernels/isa.h"

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
  JsonWriter j;
  j.begin_object();
  write_run_header(j, command, kernels::isa_name(kernels::active_isa()));
  j.key("trace").begin_object();
  j.field("path", m.path).field("model", m.model).field("source", m.source).field("num_layers", m.num_layers);
  j.field("num_heads", m.num_heads).field("num_kv_heads", m.num_kv_heads).field("head_dim", m.head_dim);
  j.field("hidden_size", m.hidden_size).field("seq_len", m.seq_len).field("prefill_len", m.prefill_len);
  j.field("dtype", dtype_name(m.dtype)).field("has_o_proj", m.has_o_proj).end_object();
  j.key("config").begin_object();
  j.field("segment", c.segment).field("block", c.block).field("budget", c.budget).field("top_k", c.top_k());
  j.field("threshold", c.threshold).field("layer_skip", c.layer_skip);
  j.field("fusion", std::string(opt.fusion_on && opt.fusion_off ? "both" : opt.fusion_on ? "on" : "off"));
  j.field("fusion_rule", "layers <= 1 store their map; deeper layers 0.25 * fused(l-1) + 0.75 * current(l)");
  j.end_object();
  const SegmentPlan& p = res.plan;
  i64 early = 0;
  for (const auto& s : p.segments()) early += s.start < c.threshold;
  int sparse_layers = 0;
  for (int l = 0; l < m.num_layers; ++l) sparse_layers += l >= c.layer_skip;
  j.key("counts").begin_object();
  j.field("prompt_len", p.n()).field("segments", p.num_segments()).field("profiled_segments", p.num_profiled());
  j.field("dense_segments", p.num_dense_segments()).field("dense_segments_below_threshold", early);
  j.field("sparse_segments", p.num_sparse_segments()).field("sparse_queries_per_layer", p.num_sparse_queries());
  j.field("sparse_layers", sparse_layers).field("dense_layers", m.num_layers - sparse_layers);
  j.field("kept_blocks_per_segment", c.top_k()).field("kept_keys_per_segment", c.top_k() * c.block + c.segment);
  j.field("pair_reduction_sparse_layer", p.pair_reduction());
  j.field("pair_reduction_sparsified_part", p.sparse_part_reduction());
  j.field("estimation_macs_per_head", p.estimation_macs(m.head_dim));
  j.end_object();
  j.field("projected", res.projected);
  j.key("locality").begin_object();
  j.field("method", "J(delta) = mean over sampled anchors i of Jaccard(top-K blocks of query i, of query i+delta), "
                    "block masses restricted to blocks entirely at or before i; anchors evenly spaced over "
                    "[(K+1)*block-1, n-2]; pairs with i+delta >= n skipped");
  j.field("anchors_per_head", static_cast<i64>(res.anchors.size())).field("max_delta", 2 * c.segment);
  j.key("anchors").begin_array();
  for (i64 a : res.anchors) j.value(a);
  j.end_array().end_object();
  j.key("variants").begin_array();
  for (const auto& v : variant_means(res)) {
    j.begin_object().field("fusion", v.variant).field("sparse_layers", v.layers);
    j.field("retained_mass_mean", v.retained).field("retained_mass_min", v.retained_min);
    j.field("pert_l1_mean", v.pert_l1).field("pert_l2_mean", v.pert_l2).field("rel_pert_l2_mean", v.rel_l2);
    j.field("block_recall_mean", v.recall).field("pair_reduction", v.pair_reduction).end_object();
  }
  j.end_array();
  j.key("timings").begin_object();
  j.field("read_seconds", res.read_seconds).field("estimate_seconds", res.estimate_seconds);
  j.field("simulate_seconds", res.simulate_seconds).field("locality_seconds", res.locality_seconds);
  j.field("total_seconds", res.total_seconds).end_object();
  j.field("peak_rss_bytes", static_cast<i64>(peak_rss_bytes()));
  j.end_object();
  return j.str() + "\n";
}

void write_prefill_outputs(const std::string& dir, const PrefillRunResult& res, const PrefillRunOptions& opt,
                           const std::string& command) {
  std::error_code ec;
  note_replacing("kvsim prefill", dir, "summary.json");
  std::filesystem::create_directories(dir, ec);
  if (ec) fail(dir, "--out", "cannot create the folder: " + ec.message());
  // summary.json last: its presence marks a complete output folder.
  write_file_atomic(dir + "/metrics.csv", metrics_csv(res));
  write_file_atomic(dir + "/locality.csv", locality_csv(res));
  write_file_atomic(dir + "/summary.json", summary_json(res, opt, command));
}

std::string bench_json(const std::vector<BenchRow>& rows, const BenchOptions& opt, const std::string& command) {
  JsonWriter j;
  j.begin_object();
  write_run_header(j, command, kernels::isa_name(kernels::active_isa()));
  j.key("config").begin_object();
  j.field("segment", opt.cfg.segment).field("block", opt.cfg.block).field("budget", opt.cfg.budget);
  j.field("threshold", opt.cfg.threshold).field("num_heads", opt.num_heads).field("num_kv_heads", opt.num_kv_heads);
  j.field("head_dim", opt.head_dim).field("repeats", opt.repeats).field("data", "uniform random [-1, 1), one layer");
  j.end_object();
  j.key("lengths").begin_array();
  for (const auto& r : rows) {
    j.begin_object().field("n", r.n).field("dense_seconds", r.dense_seconds).field("sparse_seconds", r.sparse_seconds);
    j.field("estimate_seconds", r.estimate_seconds).field("speedup", r.speedup);
    j.field("speedup_with_estimate", r.speedup_with_estimate).field("ideal_pair_reduction", r.ideal_reduction);
    j.field("speedup_over_ideal", r.speedup_over_ideal).field("dense_gflops", r.dense_gflops);
    j.field("sparse_gflops", r.sparse_gflops).field("sgemm_gflops", r.sgemm_gflops);
    j.field("dense_fraction_of_sgemm", r.dense_fraction_of_sgemm).field("dense_segment_max_abs_diff", r.max_abs_diff);
    j.field("dense_cpu_seconds", r.dense_cpu_seconds).field("sparse_cpu_seconds", r.sparse_cpu_seconds);
    j.field("speedup_cpu", r.speedup_cpu).field("dense_gflops_per_cpu_second", r.dense_gflops_per_cpu_second);
    j.field("sgemm_gflops_per_cpu_second", r.sgemm_gflops_per_cpu_second);
    j.field("dense_fraction_of_sgemm_cpu", r.dense_fraction_of_sgemm_cpu);
    j.end_object();
  }
  j.end_array();
  j.field("peak_rss_bytes", static_cast<i64>(peak_rss_bytes()));
  j.end_object();
  return j.str() + "\n";
}

}  // namespace kvsim::prefill
