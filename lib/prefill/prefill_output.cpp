#include "prefill/prefill_output.h"

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>

#include "core/columns.h"
#include "core/error.h"
#include "core/output_folder.h"
#include "core/run_header.h"
#include "core/sysinfo.h"
#include "core/table_io.h"
#include "kernels/isa.h"
#include "trace/trace_summary.h"

namespace kvsim::prefill {

namespace {

// One metrics row's values; missing metrics when no query was sparsified (dense layers).
void metric_fields(RowSink& out, const MetricSums& m, const LayerMetrics& lm) {
  out.integer(m.n);
  const double n = static_cast<double>(m.n);
  for (double v : {m.retained / n, m.retained_min, m.l1 / n, m.l1_max, m.l2 / n, m.l2_max, m.rel_l1 / n,
                   m.rel_l2 / n, m.recall / n})
    if (m.n == 0) out.missing();
    else out.real(v);
  out.real(lm.pair_reduction);
  out.real(lm.kept_keys_mean);
  out.end_row();
}

// printf into a growing string (the table is returned, the CLI prints it).
void put(std::string& out, const char* fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  out += line;
}

std::string cell(double v, const char* fmt) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string csv_text(const TableSchema& schema, void (*write)(RowSink&, const PrefillRunResult&),
                     const PrefillRunResult& res) {
  std::ostringstream os;
  CsvRowSink csv(os, schema);
  write(csv, res);
  return os.str();
}

}  // namespace

const TableSchema& prefill_metrics_schema() {
  static const TableSchema s{
      "prefill/metrics.csv",
      "kvsim prefill's metrics.csv: one (layer, head, fusion variant) over the sparsified queries; head -1 is the layer "
      "(metrics empty for dense layers)",
      {{"layer", ColumnType::integer, "", "layer index"},
       {"head", ColumnType::integer, "", "query head; -1: the whole layer (through o_proj when stored)"},
       {"fusion", ColumnType::text, "", "on | off: CritiPrefill's layer fusion of criticality scores"},
       {"n_sparse_queries", ColumnType::integer, "", "queries whose attention was sparsified"},
       {"retained_mass", ColumnType::real, "", "attention mass of the attended blocks, mean over queries"},
       {"retained_mass_min", ColumnType::real, "", "its minimum over queries"},
       {"pert_l1", ColumnType::real, "output units", "exact ‖o_dense − o_sparse‖₁, mean over queries"},
       {"pert_l1_max", ColumnType::real, "output units", "its maximum"},
       {"pert_l2", ColumnType::real, "output units", "the same in L2, mean"},
       {"pert_l2_max", ColumnType::real, "output units", "its maximum"},
       {"rel_pert_l1", ColumnType::real, "", "pert_l1 over ‖o_dense‖₁, mean"},
       {"rel_pert_l2", ColumnType::real, "", "pert_l2 over ‖o_dense‖₂, mean"},
       {"block_recall", ColumnType::real, "", "share of the true top blocks the estimate selected, mean"},
       {"pair_reduction", ColumnType::real, "", "dense causal (query, key) pairs over attended pairs of the layer"},
       {"kept_keys_mean", ColumnType::real, "tokens", "attended keys per sparsified query, mean"}}};
  return s;
}

const TableSchema& locality_schema() {
  static const TableSchema s{"locality.csv", "one (layer, head, segment distance δ): criticality locality",
                             {{"layer", ColumnType::integer, "", "layer index"},
                              {"head", ColumnType::integer, "", "query head"},
                              {"delta", ColumnType::integer, "segments", "distance between the two query segments"},
                              {"jaccard", ColumnType::real, "", "Jaccard similarity of their critical block sets, mean"},
                              {"pairs", ColumnType::integer, "", "segment pairs averaged"}}};
  return s;
}

const TableSchema& locality_shuffled_schema() {
  static const TableSchema s{"locality_shuffled.csv",
                             "one (layer, head): the shuffled baseline (8 random far partners per anchor)",
                             {{"layer", ColumnType::integer, "", "layer index"},
                              {"head", ColumnType::integer, "", "query head"},
                              {"jaccard", ColumnType::real, "", "Jaccard similarity with random far segments, mean"},
                              {"pairs", ColumnType::integer, "", "pairs averaged"}}};
  return s;
}

void write_metrics(RowSink& out, const PrefillRunResult& res) {
  for (const auto& lm : res.metrics) {
    for (std::size_t h = 0; h < lm.heads.size(); ++h) {
      out.integer(lm.layer);
      out.integer(static_cast<i64>(h));
      out.text(lm.variant);
      metric_fields(out, lm.heads[h], lm);
    }
    out.integer(lm.layer);
    out.integer(-1);
    out.text(lm.variant);
    metric_fields(out, lm.layer_row, lm);
  }
}

void write_locality(RowSink& out, const PrefillRunResult& res) {
  for (const auto& ll : res.locality)
    for (const auto& c : ll.heads)
      for (std::size_t i = 0; i < c.jaccard.size(); ++i)
        if (c.pairs[i] > 0) {
          out.integer(ll.layer);
          out.integer(c.head);
          out.integer(static_cast<i64>(i + 1));
          out.real(c.jaccard[i]);
          out.integer(c.pairs[i]);
          out.end_row();
        }
}

void write_locality_shuffled(RowSink& out, const PrefillRunResult& res) {
  for (const auto& ll : res.locality)
    for (const auto& c : ll.heads)
      if (c.shuffled_pairs > 0) {
        out.integer(ll.layer);
        out.integer(c.head);
        out.real(c.shuffled);
        out.integer(c.shuffled_pairs);
        out.end_row();
      }
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
  folder.publish({{"metrics.csv", csv_text(prefill_metrics_schema(), write_metrics, res)},
                  {"locality.csv", csv_text(locality_schema(), write_locality, res)},
                  {"locality_shuffled.csv", csv_text(locality_shuffled_schema(), write_locality_shuffled, res)},
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

std::string run_table(const PrefillRunResult& res) {
  std::string out;
  put(out, "%-5s %-6s %8s %9s %9s %10s %9s %8s %7s\n", "layer", "fusion", "queries", "F_mean", "F_min",
              "pert_l1", "rel_l2", "recall", "pairs/");
  for (const auto& lm : res.metrics) {
    const auto& m = lm.layer_row;
    if (m.n == 0) {
      put(out, "%-5d %-6s %8s %9s %9s %10s %9s %8s %7s\n", lm.layer, lm.variant.c_str(), "dense", "-", "-", "-",
                  "-", "-", "1.00");
      continue;
    }
    const double n = static_cast<double>(m.n);
    put(out, "%-5d %-6s %8lld %9s %9s %10s %9s %8s %7s\n", lm.layer, lm.variant.c_str(), static_cast<long long>(m.n),
                cell(m.retained / n, "%.5f").c_str(), cell(m.retained_min, "%.5f").c_str(),
                cell(m.l1 / n, "%.4g").c_str(), cell(m.rel_l2 / n, "%.4f").c_str(), cell(m.recall / n, "%.4f").c_str(),
                cell(lm.pair_reduction, "%.2f").c_str());
  }
  for (const auto& v : variant_means(res))
    put(out, "mean over %d sparse layers, fusion %s: F %.5f (min %.5f), rel_pert_l2 %.4f, block recall %.4f, "
                "pair reduction %.2fx\n",
                v.layers, v.variant.c_str(), v.retained, v.retained_min, v.rel_l2, v.recall, v.pair_reduction);
  if (!res.locality.empty()) {
    const i64 S = res.plan.config().segment;
    for (i64 delta : {i64{1}, S / 4, S, 2 * S}) {
      i64 cnt = 0;
      const double mean = locality_mean_at(res, delta, &cnt);
      if (cnt) put(out, "locality J(%lld) = %.4f (mean over %lld layer-heads)\n", static_cast<long long>(delta), mean,
                           static_cast<long long>(cnt));
    }
    const LocalityMeans lm = locality_means(res);
    if (std::isfinite(lm.shuffled))
      put(out, "locality J(shuffled pairs) = %.4f (baseline: the same anchors against random far queries)\n",
                  lm.shuffled);
  }
  return out;
}

PrefillRunResult run_prefill(const std::string& trace, const PrefillRunOptions& opt, const std::string& out_dir,
                             const std::string& command) {
  std::optional<OutputFolder> folder;  // locked before the run, published after it
  if (!out_dir.empty()) folder.emplace("kvsim prefill", out_dir, "summary.json");
  PrefillRunResult res = run_prefill_trace(trace, opt);
  const PrefillConfig& cfg = opt.cfg;
  if (res.plan.num_sparse_segments() == 0 || cfg.layer_skip >= res.meta.num_layers)
    std::cerr << "kvsim prefill: note: nothing was sparsified (prompt " << res.plan.n() << " tokens, segment "
              << cfg.segment << ", threshold " << cfg.threshold << ", layer_skip " << cfg.layer_skip
              << "): every query ran dense; lower --threshold / --segment to simulate short prompts\n";
  if (folder) write_prefill_outputs(*folder, res, opt, command);
  return res;
}

}  // namespace kvsim::prefill
