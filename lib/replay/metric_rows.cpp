#include "replay/metric_rows.h"

#include <algorithm>
#include <limits>

#include "quant/kv_quant.h"
#include "quant/quantized_kv.h"

namespace kvsim {

namespace {

double reduce(const std::vector<double>& v, std::size_t off, i64 n, Reduce how) {
  if (how == Reduce::mean) {
    double s = 0;
    for (i64 i = 0; i < n; ++i) s += v[off + i];
    return n > 0 ? s / n : std::numeric_limits<double>::quiet_NaN();
  }
  double m = how == Reduce::min ? std::numeric_limits<double>::infinity() : -std::numeric_limits<double>::infinity();
  for (i64 i = 0; i < n; ++i) m = how == Reduce::min ? std::min(m, v[off + i]) : std::max(m, v[off + i]);
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
// Bytes of the kept span of head h's unit: quant(...)'s (one-shot, or the decode protocol's
// held codes), else float16 keys and values.
double head_bytes(const Selection& sel, int h, int G, int d) {
  const int u = sel.mode == GqaMode::kv ? h / G : h;
  if (!sel.kept_bytes.empty()) return sel.kept_bytes[static_cast<std::size_t>(u)];
  return sel.quant ? sel.quant->bytes[u] : float16_bytes(sel.kept_count(u), d);
}
double layer_bytes(const Selection& sel, int H, int G, int d) {
  double s = 0;
  for (int h = 0; h < H; ++h) s += head_bytes(sel, h, G, d);
  return s / H;
}
double ratio_of(double bytes, const Selection& sel, int d) {
  return sel.n_c > 0 ? bytes / float16_bytes(sel.n_c, d) : 0.0;
}

// The key columns, in metric_columns.cpp's order.
void write_key(RowSink& out, const RowKey& k, double kept, double bytes, double ratio, int head) {
  out.text(k.rule);
  out.text(k.label);
  out.text(k.budget);
  out.integer(k.budget_tokens);
  out.real(kept);
  out.real(bytes);
  out.real(ratio);
  out.integer(k.layer);
  out.integer(head);
  out.text(k.eval);
}

}  // namespace

LayerAggregate write_metric_rows(RowSink& out, const RowKey& key, const Selection& sel, const PerturbationResult& r,
                                 const std::vector<int>& heads, int G) {
  const i64 n = r.n_q;
  const int d = key.head_dim;
  for (int h : heads) {
    const double bytes = head_bytes(sel, h, G, d);
    write_key(out, key, head_kept(sel, h, G), bytes, ratio_of(bytes, sel, d), h);
    out.integer(n);
    for (const MetricColumn& m : kMetricColumns) out.real(reduce(r.*m.head, r.at(h, 0), n, m.reduce));
    out.end_row();
  }
  LayerAggregate a;
  a.kept_tokens = layer_kept(sel, r.num_heads, G);
  const double bytes = layer_bytes(sel, r.num_heads, G, d);
  a.cache_ratio = ratio_of(bytes, sel, d);
  for (std::size_t i = 0; i < kNumMetrics; ++i)
    a.values[i] = reduce(r.*kMetricColumns[i].layer, 0, n, kMetricColumns[i].reduce);
  write_key(out, key, a.kept_tokens, bytes, a.cache_ratio, -1);
  out.integer(n);
  for (double v : a.values) out.real(v);
  out.end_row();
  return a;
}

void write_per_query_rows(RowSink& out, const RowKey& key, const Selection& sel, const PerturbationResult& r,
                          const std::vector<i64>& positions, const std::vector<int>& heads, int G) {
  const int d = key.head_dim;
  for (int h : heads)
    for (i64 qi = 0; qi < r.n_q; ++qi) {
      const double bytes = head_bytes(sel, h, G, d);
      write_key(out, key, head_kept(sel, h, G), bytes, ratio_of(bytes, sel, d), h);
      out.integer(positions[qi]);
      for (const MetricColumn& m : kMetricColumns)
        if (m.per_query) out.real((r.*m.head)[r.at(h, qi)]);
      out.end_row();
    }
  const double kept = layer_kept(sel, r.num_heads, G);
  const double bytes = layer_bytes(sel, r.num_heads, G, d);
  for (i64 qi = 0; qi < r.n_q; ++qi) {
    write_key(out, key, kept, bytes, ratio_of(bytes, sel, d), -1);
    out.integer(positions[qi]);
    for (const MetricColumn& m : kMetricColumns)
      if (m.per_query) out.real((r.*m.layer)[qi]);
    out.end_row();
  }
}

std::vector<QuestionSpan> trace_questions(const std::map<std::string, std::pair<i64, i64>>& spans) {
  std::vector<QuestionSpan> out;
  for (const auto& [name, range] : spans) {
    if (name.rfind("question_", 0) != 0) continue;
    const std::string num = name.substr(9);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos) continue;
    QuestionSpan q{std::stoi(num), range.first, range.second};
    const auto answer = spans.find("answer_" + num);
    if (answer != spans.end()) q.end = std::max(q.end, answer->second.second);
    out.push_back(q);
  }
  std::sort(out.begin(), out.end(), [](const QuestionSpan& a, const QuestionSpan& b) { return a.k < b.k; });
  return out;
}

std::vector<double> write_per_question_rows(RowSink& out, const RowKey& key, const Selection& sel,
                                            const PerturbationResult& r, const std::vector<i64>& positions,
                                            const std::vector<QuestionSpan>& questions, int G) {
  const int d = key.head_dim;
  const double kept = layer_kept(sel, r.num_heads, G);
  const double bytes = layer_bytes(sel, r.num_heads, G, d);
  const std::size_t pert_l1 = metric_index("pert_l1");
  std::vector<double> l1(questions.size(), std::numeric_limits<double>::quiet_NaN());
  for (std::size_t k = 0; k < questions.size(); ++k) {
    std::vector<i64> rows;
    for (i64 qi = 0; qi < r.n_q; ++qi)
      if (positions[qi] >= questions[k].begin && positions[qi] < questions[k].end) rows.push_back(qi);
    if (rows.empty()) continue;
    write_key(out, key, kept, bytes, ratio_of(bytes, sel, d), -1);
    out.integer(questions[k].k);
    out.integer(static_cast<i64>(rows.size()));
    for (std::size_t m = 0; m < kNumMetrics; ++m) {
      if (!kMetricColumns[m].per_query) continue;
      double s = 0;
      for (i64 qi : rows) s += (r.*kMetricColumns[m].layer)[qi];
      out.real(s / static_cast<double>(rows.size()));
      if (m == pert_l1) l1[k] = s / static_cast<double>(rows.size());
    }
    out.end_row();
  }
  return l1;
}

}  // namespace kvsim
