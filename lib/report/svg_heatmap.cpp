#include "report/svg_heatmap.h"


#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "report/markup_escape.h"
#include "report/report_exports.h"
#include "report/svg_plot.h"

namespace kvsim::svg {

namespace {

std::string short_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g", v);
  return buf;
}

}  // namespace

std::string viridis(double t) {
  // Matplotlib's viridis sampled at 9 stops, linearly interpolated.
  static const double stops[9][3] = {{68, 1, 84},    {71, 44, 122},  {59, 81, 139},   {44, 113, 142}, {33, 144, 141},
                                     {39, 173, 129}, {92, 200, 99},  {170, 220, 50},  {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 8;
  const int i = std::min(7, static_cast<int>(t));
  const double f = t - i;
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", static_cast<int>(std::lround(stops[i][0] + f * (stops[i + 1][0] - stops[i][0]))),
                static_cast<int>(std::lround(stops[i][1] + f * (stops[i + 1][1] - stops[i][1]))),
                static_cast<int>(std::lround(stops[i][2] + f * (stops[i + 1][2] - stops[i][2]))));
  return buf;
}

std::string HeatMap::render() const {
  const std::size_t rows = row_labels.size(), cols = col_labels.size();
  auto transform = [&](double v) { return log_color ? (v > 0 ? std::log10(v) : std::nan("")) : v; };
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values) {
    const double t = transform(v);
    if (std::isfinite(t)) { lo = std::min(lo, t); hi = std::max(hi, t); }
  }
  if (!(lo <= hi)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-12) hi = lo + 1e-12;

  std::size_t label_chars = 4;
  for (const auto& r : row_labels) label_chars = std::max(label_chars, std::min<std::size_t>(r.size(), 48));
  const double ml = 20 + 6.2 * static_cast<double>(label_chars), mt = title.empty() ? 10 : 30, mb = 44, mr = 90;
  const double cell_w = std::clamp(460.0 / std::max<std::size_t>(cols, 1), 14.0, 70.0);
  const double cell_h = std::clamp(260.0 / std::max<std::size_t>(rows, 1), 14.0, 34.0);
  const double pw = cell_w * static_cast<double>(cols), ph = cell_h * static_cast<double>(rows);
  const double W = ml + pw + mr, H = mt + ph + mb;
  const bool show_values = cell_w >= 38 && cell_h >= 16;

  std::string o = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"heatmap\" width=\"" + fmt(W) + "\" height=\"" + fmt(H) +
                  "\" viewBox=\"0 0 " + fmt(W) + " " + fmt(H) + "\" font-family=\"sans-serif\" font-size=\"11\">";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>";
  if (!title.empty())
    o += "<text x=\"" + fmt(W / 2) + "\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">" +
         report::html_escape(title) + "</text>";
  for (std::size_t r = 0; r < rows; ++r) {
    const double y = mt + cell_h * static_cast<double>(r);
    std::string label = row_labels[r].size() > 48 ? row_labels[r].substr(0, 45) + "..." : row_labels[r];
    o += "<text x=\"" + fmt(ml - 5) + "\" y=\"" + fmt(y + cell_h / 2 + 4) + "\" text-anchor=\"end\"><title>" +
         report::html_escape(row_labels[r]) + "</title>" + report::html_escape(label) + "</text>";
    for (std::size_t c = 0; c < cols; ++c) {
      const double v = r * cols + c < values.size() ? values[r * cols + c] : std::nan("");
      const double t = transform(v);
      double u = std::isfinite(t) ? (t - lo) / (hi - lo) : 0;
      if (reverse) u = 1 - u;
      const std::string fill = std::isfinite(t) ? viridis(u) : "#cccccc";
      const double x = ml + cell_w * static_cast<double>(c);
      o += "<rect x=\"" + fmt(x) + "\" y=\"" + fmt(y) + "\" width=\"" + fmt(cell_w) + "\" height=\"" + fmt(cell_h) +
           "\" fill=\"" + fill + "\" stroke=\"white\" stroke-width=\"0.5\"><title>" + report::html_escape(row_labels[r]) + " / " +
           report::html_escape(col_labels[c]) + ": " + short_number(v) + "</title></rect>";
      if (show_values)
        o += "<text x=\"" + fmt(x + cell_w / 2) + "\" y=\"" + fmt(y + cell_h / 2 + 4) + "\" text-anchor=\"middle\" fill=\"" +
             (u > 0.6 ? "#000" : "#fff") + "\" font-size=\"10\">" + short_number(v) + "</text>";
    }
  }
  const std::size_t every = std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil(22.0 / cell_w)));
  for (std::size_t c = 0; c < cols; c += every)
    o += "<text x=\"" + fmt(ml + cell_w * (static_cast<double>(c) + 0.5)) + "\" y=\"" + fmt(mt + ph + 14) +
         "\" text-anchor=\"middle\">" + report::html_escape(col_labels[c]) + "</text>";
  if (!xlabel.empty())
    o += "<text x=\"" + fmt(ml + pw / 2) + "\" y=\"" + fmt(mt + ph + 32) + "\" text-anchor=\"middle\" font-size=\"12\">" +
         report::html_escape(xlabel) + "</text>";
  if (!ylabel.empty())
    o += "<text x=\"4\" y=\"" + fmt(mt - 4) + "\" font-size=\"12\">" + report::html_escape(ylabel) + "</text>";
  // Colour bar.
  const double bx = ml + pw + 16, bh = std::max(ph, 60.0);
  for (int i = 0; i < 32; ++i) {
    double u = 1 - (i + 0.5) / 32.0;
    const std::string fill = viridis(reverse ? 1 - u : u);
    o += "<rect x=\"" + fmt(bx) + "\" y=\"" + fmt(mt + bh * i / 32.0) + "\" width=\"12\" height=\"" + fmt(bh / 32.0 + 0.5) +
         "\" fill=\"" + fill + "\"/>";
  }
  auto bar_label = [&](double t) { return short_number(log_color ? std::pow(10.0, t) : t); };
  o += "<text x=\"" + fmt(bx + 15) + "\" y=\"" + fmt(mt + 9) + "\">" + bar_label(hi) + "</text>";
  o += "<text x=\"" + fmt(bx + 15) + "\" y=\"" + fmt(mt + bh) + "\">" + bar_label(lo) + "</text>";
  if (!value_label.empty())
    o += "<text x=\"" + fmt(bx + 15) + "\" y=\"" + fmt(mt + bh / 2 + 4) + "\" font-size=\"10\">" + report::html_escape(value_label) +
         (log_color ? " (log)" : "") + "</text>";
  o += "</svg>";
  if (report::ReportExports* e = report::active_exports()) e->figure(o, title);
  return o;
}

}  // namespace kvsim::svg
