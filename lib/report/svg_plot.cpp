#include "report/svg_plot.h"


#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>

#include "report/markup_escape.h"
#include "report/report_exports.h"

namespace kvsim::svg {

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f", v);
  return buf;
}

namespace {

std::string superscript(int e) {
  static const char* digits[] = {"⁰", "¹", "²", "³", "⁴", "⁵", "⁶", "⁷", "⁸", "⁹"};
  std::string out = e < 0 ? "⁻" : "";
  const std::string d = std::to_string(std::abs(e));
  for (char c : d) out += digits[c - '0'];
  return out;
}

double nice_step(double span, int target) {
  const double raw = span / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double r = raw / mag;
  return (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity(), hi = -std::numeric_limits<double>::infinity();
  void add(double v) { lo = std::min(lo, v); hi = std::max(hi, v); }
  bool empty() const { return !(lo <= hi); }
};

// Pads a data range so that points do not sit on the frame; handles degenerate ranges.
Range padded(Range r, Scale s) {
  if (r.empty()) return s == Scale::log ? Range{0.1, 10} : Range{0, 1};
  if (s == Scale::log) {
    double a = std::log10(r.lo), b = std::log10(r.hi);
    if (b - a < 1e-9) { a -= 0.5; b += 0.5; }
    const double pad = 0.04 * (b - a);
    return {std::pow(10.0, a - pad), std::pow(10.0, b + pad)};
  }
  double a = r.lo, b = r.hi;
  if (b - a < 1e-12 * std::max(1.0, std::abs(a))) {
    const double d = a == 0 ? 1 : 0.1 * std::abs(a);
    a -= d; b += d;
  }
  const double pad = 0.04 * (b - a);
  return {a - pad, b + pad};
}

}  // namespace

const std::string& palette(int i) {
  static const std::vector<std::string> colors = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                                  "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  return colors[static_cast<std::size_t>(((i % 10) + 10) % 10)];
}

Pen pen(int i) {
  Pen p;
  p.color = palette(i);
  const int round = (i < 0 ? 0 : i / 10) % 3;
  p.dashed = round == 1;
  p.dotted = round == 2;
  p.marker = round == 0 ? Marker::circle : (round == 1 ? Marker::square : Marker::triangle);
  return p;
}

std::vector<double> linear_ticks(double lo, double hi, int target) {
  std::vector<double> t;
  if (!(hi > lo)) return {lo};
  const double step = nice_step(hi - lo, target);
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + 1e-9 * step; v += step)
    t.push_back(std::abs(v) < 1e-12 * step ? 0.0 : v);
  return t;
}

std::vector<double> log_ticks(double lo, double hi) {
  std::vector<double> t;
  if (!(lo > 0 && hi > lo)) return t;
  const int a = static_cast<int>(std::floor(std::log10(lo))), b = static_cast<int>(std::ceil(std::log10(hi)));
  const int decades = b - a;
  const int every = std::max(1, decades / 8);  // keep at most ~8 labelled decades
  for (int e = a; e <= b; ++e) {
    const double p = std::pow(10.0, e);
    if ((e - a) % every == 0 && p >= lo * (1 - 1e-12) && p <= hi * (1 + 1e-12)) t.push_back(p);
    if (decades < 3)
      for (double m : {2.0, 5.0})
        if (m * p >= lo && m * p <= hi) t.push_back(m * p);
  }
  std::sort(t.begin(), t.end());
  return t;
}

std::string tick_label(double v, Scale scale) {
  if (scale == Scale::log) {
    const double e = std::floor(std::log10(v) + 1e-9);
    const double m = v / std::pow(10.0, e);
    const int ei = static_cast<int>(e);
    if (ei >= -2 && ei <= 3) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%g", v);
      return buf;
    }
    if (std::abs(m - 1) < 1e-6) return "10" + superscript(ei);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g×10", std::round(m));
    return buf + superscript(ei);
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

namespace {

// One marker centred at (x, y) with "radius" r.
std::string marker_svg(Marker m, double x, double y, double r, const std::string& color, const char* opacity) {
  const std::string paint = "\" fill=\"" + color + "\" fill-opacity=\"" + opacity + "\"/>";
  if (m == Marker::square)
    return "<rect x=\"" + fmt(x - r) + "\" y=\"" + fmt(y - r) + "\" width=\"" + fmt(2 * r) + "\" height=\"" +
           fmt(2 * r) + paint;
  if (m == Marker::triangle)
    return "<polygon points=\"" + fmt(x) + "," + fmt(y - 1.2 * r) + " " + fmt(x - 1.1 * r) + "," + fmt(y + 0.8 * r) +
           " " + fmt(x + 1.1 * r) + "," + fmt(y + 0.8 * r) + paint;
  return "<circle cx=\"" + fmt(x) + "\" cy=\"" + fmt(y) + "\" r=\"" + fmt(r) + paint;
}

const char* dash_attribute(bool dashed, bool dotted) {
  return dashed ? " stroke-dasharray=\"6,3\"" : (dotted ? " stroke-dasharray=\"1.5,2.5\"" : "");
}

// A series of the given kind; an empty color picks the palette colour of its index.
Series new_series(Series::Kind kind, std::string label, std::string color, std::size_t index) {
  Series s;
  s.kind = kind;
  s.label = std::move(label);
  s.color = color.empty() ? palette(static_cast<int>(index)) : std::move(color);
  return s;
}

}  // namespace

Plot& Plot::scatter(std::string label, std::vector<double> x, std::vector<double> y, std::string color) {
  Series s = new_series(Series::Kind::points, std::move(label), std::move(color), series_.size());
  s.x = std::move(x);
  s.y = std::move(y);
  series_.push_back(std::move(s));
  return *this;
}

Plot& Plot::line(std::string label, std::vector<double> x, std::vector<double> y, std::string color,
                 bool markers, bool dashed) {
  Series s = new_series(Series::Kind::line, std::move(label), std::move(color), series_.size());
  s.x = std::move(x);
  s.y = std::move(y);
  s.markers = markers;
  s.dashed = dashed;
  s.opacity = 1.0;
  series_.push_back(std::move(s));
  return *this;
}

Plot& Plot::scatter(std::string label, std::vector<double> x, std::vector<double> y, const Pen& pen) {
  scatter(std::move(label), std::move(x), std::move(y), pen.color);
  series_.back().marker = pen.marker;
  return *this;
}

Plot& Plot::line(std::string label, std::vector<double> x, std::vector<double> y, const Pen& pen, bool markers) {
  line(std::move(label), std::move(x), std::move(y), pen.color, markers, pen.dashed);
  series_.back().dotted = pen.dotted;
  series_.back().marker = pen.marker;
  return *this;
}

Plot& Plot::bars(std::string label, std::vector<double> left, std::vector<double> right,
                 std::vector<double> heights, std::string color) {
  Series s = new_series(Series::Kind::bars, std::move(label), std::move(color), series_.size());
  s.x = std::move(left);
  s.x2 = std::move(right);
  s.y = std::move(heights);
  s.opacity = 0.55;
  series_.push_back(std::move(s));
  return *this;
}

bool Plot::drawable(double v, Scale s) const { return std::isfinite(v) && (s == Scale::linear || v > 0); }

std::size_t Plot::dropped_points() const {
  std::size_t n = 0;
  for (const auto& s : series_)
    for (std::size_t i = 0; i < s.y.size(); ++i)
      if (!drawable(s.x[i], xscale_) || !drawable(s.y[i], yscale_)) ++n;
  return n;
}

std::string Plot::render() const {
  Range xr, yr;
  for (const auto& s : series_) {
    for (std::size_t i = 0; i < s.y.size(); ++i) {
      const double x = s.x[i], y = s.y[i];
      if (s.kind == Series::Kind::bars) {
        if (drawable(x, xscale_)) xr.add(x);
        if (drawable(s.x2[i], xscale_)) xr.add(s.x2[i]);
        if (drawable(y, yscale_)) yr.add(y);
        continue;
      }
      if (!drawable(x, xscale_) || !drawable(y, yscale_)) continue;
      xr.add(x);
      yr.add(y);
    }
  }
  if (y_from_zero_ && yscale_ == Scale::linear && !yr.empty()) yr.add(0);
  if (same_ranges_ && !xr.empty() && !yr.empty()) {
    Range both = xr;
    both.add(yr.lo);
    both.add(yr.hi);
    xr = yr = both;
  }
  const Range X = padded(xr, xscale_);
  Range Y = padded(yr, yscale_);
  if (y_from_zero_ && yscale_ == Scale::linear && yr.lo >= 0) Y.lo = 0;

  std::vector<const Series*> legend;
  for (const auto& s : series_)
    if (!s.label.empty()) legend.push_back(&s);
  const bool identity_in_legend = identity_ && !identity_label_.empty();
  const int legend_rows = static_cast<int>(legend.size()) + (identity_in_legend ? 1 : 0);
  const double ml = 72, mr = 18, mt = title_.empty() ? 12 : 30, mb = 52;
  const double pw = width_ - ml - mr, ph = height_ - mt - mb;
  // The legend sits right of the axes, one entry per line, so the plot keeps its height whatever
  // the number of rules; narrow panels (facets) keep it underneath. Labels longer than
  // kLegendChars are cut (the full text is the entry's tooltip).
  constexpr std::size_t kLegendChars = 48;
  const bool beside = width_ >= 400 && legend_rows > 0;
  std::size_t longest = identity_in_legend ? identity_label_.size() : 0;
  for (const Series* s : legend) longest = std::max(longest, std::min(s->label.size(), kLegendChars + 3));
  const int legend_w = beside ? static_cast<int>(30 + 6.3 * static_cast<double>(longest)) : 0;
  const int total_w = width_ + legend_w;
  const int total_h = beside ? std::max(height_, static_cast<int>(mt) + 8 + legend_rows * 16)
                             : height_ + legend_rows * 16 + (legend_rows ? 6 : 0);

  auto map = [](double v, const Range& r, Scale s) {
    if (s == Scale::log) return (std::log10(v) - std::log10(r.lo)) / (std::log10(r.hi) - std::log10(r.lo));
    return (v - r.lo) / (r.hi - r.lo);
  };
  auto px = [&](double x) { return ml + pw * map(x, X, xscale_); };
  auto py = [&](double y) { return mt + ph * (1 - map(y, Y, yscale_)); };

  std::string o;
  o += "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" width=\"" + std::to_string(total_w) +
       "\" height=\"" + std::to_string(total_h) + "\" viewBox=\"0 0 " + std::to_string(total_w) + " " +
       std::to_string(total_h) + "\" font-family=\"sans-serif\" font-size=\"11\">";
  o += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>";
  if (!title_.empty())
    o += "<text x=\"" + fmt(width_ / 2.0) + "\" y=\"18\" text-anchor=\"middle\" font-size=\"13\" font-weight=\"bold\">" +
         report::html_escape(title_) + "</text>";
  // Grid and ticks.
  auto xt = xscale_ == Scale::log ? log_ticks(X.lo, X.hi) : linear_ticks(X.lo, X.hi);
  if (integer_x_ && xscale_ == Scale::linear) {
    std::vector<double> whole;
    for (double t : xt)
      if (std::abs(t - std::round(t)) < 1e-9) whole.push_back(std::round(t));
    if (whole.size() < 2)  // a short axis: every integer in range
      for (double v = std::ceil(X.lo); v <= X.hi + 1e-9 && whole.size() < 64; v += 1) whole.push_back(v);
    std::sort(whole.begin(), whole.end());
    whole.erase(std::unique(whole.begin(), whole.end()), whole.end());
    xt = whole;
  }
  const auto yt = yscale_ == Scale::log ? log_ticks(Y.lo, Y.hi) : linear_ticks(Y.lo, Y.hi);
  for (double t : xt) {
    const std::string x = fmt(px(t));
    o += "<line x1=\"" + x + "\" y1=\"" + fmt(mt) + "\" x2=\"" + x + "\" y2=\"" + fmt(mt + ph) +
         "\" stroke=\"#e4e4e4\"/>";
    o += "<text x=\"" + x + "\" y=\"" + fmt(mt + ph + 15) + "\" text-anchor=\"middle\">" +
         report::html_escape(tick_label(t, xscale_)) + "</text>";
  }
  for (double t : yt) {
    const std::string y = fmt(py(t));
    o += "<line x1=\"" + fmt(ml) + "\" y1=\"" + y + "\" x2=\"" + fmt(ml + pw) + "\" y2=\"" + y +
         "\" stroke=\"#e4e4e4\"/>";
    o += "<text x=\"" + fmt(ml - 5) + "\" y=\"" + fmt(py(t) + 4) + "\" text-anchor=\"end\">" +
         report::html_escape(tick_label(t, yscale_)) + "</text>";
  }
  o += "<rect x=\"" + fmt(ml) + "\" y=\"" + fmt(mt) + "\" width=\"" + fmt(pw) + "\" height=\"" + fmt(ph) +
       "\" fill=\"none\" stroke=\"#444\"/>";
  if (!xlabel_.empty())
    o += "<text x=\"" + fmt(ml + pw / 2) + "\" y=\"" + fmt(mt + ph + 34) + "\" text-anchor=\"middle\" font-size=\"12\">" +
         report::html_escape(xlabel_) + "</text>";
  if (!ylabel_.empty())
    o += "<text transform=\"translate(16," + fmt(mt + ph / 2) + ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">" +
         report::html_escape(ylabel_) + "</text>";

  // Everything data-bound is clipped to the plot area.
  static std::atomic<int> clip_counter{0};  // ids must be unique within one HTML document
  const std::string clip = "clip" + std::to_string(clip_counter++);
  o += "<clipPath id=\"" + clip + "\"><rect x=\"" + fmt(ml) + "\" y=\"" + fmt(mt) + "\" width=\"" + fmt(pw) +
       "\" height=\"" + fmt(ph) + "\"/></clipPath><g clip-path=\"url(#" + clip + ")\">";
  if (identity_) {
    const double lo = std::max(X.lo, Y.lo), hi = std::min(X.hi, Y.hi);
    if (lo < hi)
      o += "<line x1=\"" + fmt(px(lo)) + "\" y1=\"" + fmt(py(lo)) + "\" x2=\"" + fmt(px(hi)) + "\" y2=\"" +
           fmt(py(hi)) + "\" stroke=\"#222\" stroke-dasharray=\"5,4\"/>";
  }
  for (const auto& s : series_) {
    if (s.kind == Series::Kind::bars) {
      const double base = yscale_ == Scale::log ? Y.lo : std::max(Y.lo, 0.0);
      for (std::size_t i = 0; i < s.y.size(); ++i) {
        if (!drawable(s.x[i], xscale_) || !drawable(s.x2[i], xscale_) || !drawable(s.y[i], yscale_)) continue;
        const double x0 = px(s.x[i]), x1 = px(s.x2[i]), y0 = py(base), y1 = py(s.y[i]);
        o += "<rect x=\"" + fmt(x0) + "\" y=\"" + fmt(std::min(y0, y1)) + "\" width=\"" + fmt(std::max(0.5, x1 - x0)) +
             "\" height=\"" + fmt(std::abs(y0 - y1)) + "\" fill=\"" + s.color + "\" fill-opacity=\"" +
             fmt(s.opacity).substr(0, 4) + "\" stroke=\"" + s.color + "\"/>";
      }
      continue;
    }
    if (s.kind == Series::Kind::line) {
      std::string pts;
      for (std::size_t i = 0; i < s.y.size(); ++i) {
        if (!drawable(s.x[i], xscale_) || !drawable(s.y[i], yscale_)) continue;
        pts += fmt(px(s.x[i])) + "," + fmt(py(s.y[i])) + " ";
      }
      if (!pts.empty())
        o += "<polyline fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"2\"" +
             dash_attribute(s.dashed, s.dotted) + " points=\"" + pts + "\"/>";
      if (!s.markers) continue;
    }
    const double r = s.kind == Series::Kind::points ? 3.0 : 3.5;
    for (std::size_t i = 0; i < s.y.size(); ++i) {
      if (!drawable(s.x[i], xscale_) || !drawable(s.y[i], yscale_)) continue;
      o += marker_svg(s.marker, px(s.x[i]), py(s.y[i]), r, s.color, s.kind == Series::Kind::points ? "0.6" : "1");
    }
  }
  o += "</g>";

  // Legend: each entry drawn as its series is (colour, dash, marker).
  const double lx = beside ? width_ - mr + 12 : ml;
  double ly = beside ? mt + 10 : height_ + 4;
  const std::size_t max_chars = beside ? kLegendChars : 95;
  auto legend_entry = [&](const Series& s) {
    if (s.kind == Series::Kind::points)
      o += marker_svg(s.marker, lx + 8, ly - 4, 4, s.color, "1");
    else if (s.kind == Series::Kind::bars)
      o += "<rect x=\"" + fmt(lx) + "\" y=\"" + fmt(ly - 8) + "\" width=\"16\" height=\"9\" fill=\"" + s.color +
           "\" fill-opacity=\"0.6\"/>";
    else {
      o += "<line x1=\"" + fmt(lx) + "\" y1=\"" + fmt(ly - 4) + "\" x2=\"" + fmt(lx + 20) + "\" y2=\"" + fmt(ly - 4) +
           "\" stroke=\"" + s.color + "\" stroke-width=\"2.5\"" + dash_attribute(s.dashed, s.dotted) + "/>";
      if (s.markers) o += marker_svg(s.marker, lx + 10, ly - 4, 3, s.color, "1");
    }
    const std::string text = s.label.size() > max_chars ? s.label.substr(0, max_chars) + "..." : s.label;
    o += "<text x=\"" + fmt(lx + 26) + "\" y=\"" + fmt(ly) + "\"><title>" + report::html_escape(s.label) + "</title>" +
         report::html_escape(text) + "</text>";
    ly += 16;
  };
  for (const Series* s : legend) legend_entry(*s);
  if (identity_in_legend) {
    Series identity;
    identity.kind = Series::Kind::line;
    identity.label = identity_label_;
    identity.color = "#222";
    identity.dashed = true;
    identity.markers = false;
    legend_entry(identity);
  }
  o += "</svg>";
  if (report::ReportExports* e = report::active_exports()) e->figure(o, title_);
  return o;
}

Histogram histogram(const std::vector<double>& values, int bins, double lo, double hi) {
  Histogram h;
  if (!(lo < hi)) {
    lo = std::numeric_limits<double>::infinity();
    hi = -lo;
    for (double v : values)
      if (std::isfinite(v)) { lo = std::min(lo, v); hi = std::max(hi, v); }
    if (!(lo <= hi)) return h;
    if (hi - lo < 1e-12) { lo -= 0.5; hi += 0.5; }
  }
  bins = std::max(1, bins);
  const double w = (hi - lo) / bins;
  h.count.assign(static_cast<std::size_t>(bins), 0);
  for (int b = 0; b < bins; ++b) {
    h.left.push_back(lo + b * w);
    h.right.push_back(lo + (b + 1) * w);
  }
  for (double v : values) {
    if (!std::isfinite(v) || v < lo || v > hi) continue;
    int b = static_cast<int>((v - lo) / w);
    h.count[static_cast<std::size_t>(std::min(b, bins - 1))] += 1;
  }
  return h;
}

}  // namespace kvsim::svg
