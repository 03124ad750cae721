#pragma once
// A small SVG plotting module for the self-contained HTML report: axes with linear or log
// scales and "nice" ticks, scatter / line / bar series, an optional y = x reference line and a
// legend beside the plot (under it on narrow panels). Output is a standalone <svg> element (no scripts, no external fonts).
#include <string>
#include <vector>

namespace kvsim::svg {

enum class Scale { linear, log };

// Tick positions for an axis range (data units). Linear: multiples of 1, 2 or 5 x 10^k.
// Log: powers of ten (plus 2x and 5x when the range spans fewer than three decades).
std::vector<double> linear_ticks(double lo, double hi, int target = 6);
std::vector<double> log_ticks(double lo, double hi);
std::string tick_label(double v, Scale scale);  // "0.25", "10⁻³", "2×10⁴"

const std::string& palette(int i);  // categorical colours (Tableau 10), cycling

enum class Marker { circle, square, triangle };
// The i-th categorical style for one series per rule: Tableau 10's colours, then the same colours
// dashed with square markers (i = 10..19), then dotted with triangles (20..29), so a plot of up
// to 30 rules never draws two of them alike.
struct Pen {
  std::string color;
  bool dashed = false, dotted = false;
  Marker marker = Marker::circle;
};
Pen pen(int i);
std::string fmt(double v);  // "%.1f": coordinates and sizes in SVG output

struct Series {
  enum class Kind { points, line, bars };
  Kind kind = Kind::points;
  std::string label, color;
  std::vector<double> x, y;
  std::vector<double> x2;  // bars: right edges (x holds left edges, y heights)
  bool markers = true;     // lines: draw a marker at every point
  bool dashed = false, dotted = false;
  Marker marker = Marker::circle;
  double opacity = 0.75;
};

class Plot {
 public:
  Plot(int width = 620, int height = 360) : width_(width), height_(height) {}
  Plot& title(std::string t) { title_ = std::move(t); return *this; }
  Plot& xlabel(std::string t) { xlabel_ = std::move(t); return *this; }
  Plot& ylabel(std::string t) { ylabel_ = std::move(t); return *this; }
  Plot& xscale(Scale s) { xscale_ = s; return *this; }
  Plot& yscale(Scale s) { yscale_ = s; return *this; }
  // Uses one range for both axes (for y = x comparisons).
  Plot& same_ranges(bool on = true) { same_ranges_ = on; return *this; }
  Plot& identity_line(std::string label = "y = x") { identity_ = true; identity_label_ = std::move(label); return *this; }
  Plot& y_from_zero(bool on = true) { y_from_zero_ = on; return *this; }
  // Only whole-number ticks on x (layers, heads): no 0.5 or 1.5 on a 4-layer axis.
  Plot& integer_x(bool on = true) { integer_x_ = on; return *this; }

  Plot& scatter(std::string label, std::vector<double> x, std::vector<double> y, std::string color = "");
  Plot& line(std::string label, std::vector<double> x, std::vector<double> y, std::string color = "",
             bool markers = true, bool dashed = false);
  Plot& scatter(std::string label, std::vector<double> x, std::vector<double> y, const Pen& pen);
  Plot& line(std::string label, std::vector<double> x, std::vector<double> y, const Pen& pen, bool markers = true);
  Plot& bars(std::string label, std::vector<double> left, std::vector<double> right,
             std::vector<double> heights, std::string color = "");

  // Points that could not be drawn (non-finite, or <= 0 on a log axis); the caption says so.
  std::size_t dropped_points() const;
  std::string render() const;

 private:
  bool drawable(double v, Scale s) const;
  int width_, height_;
  std::string title_, xlabel_, ylabel_, identity_label_;
  Scale xscale_ = Scale::linear, yscale_ = Scale::linear;
  bool same_ranges_ = false, identity_ = false, y_from_zero_ = false, integer_x_ = false;
  std::vector<Series> series_;
};

// Equal-width histogram of the finite values: `bins` bins over [lo, hi] (data range when
// lo >= hi). Returns left edges, right edges and counts.
struct Histogram {
  std::vector<double> left, right, count;
};
Histogram histogram(const std::vector<double>& values, int bins, double lo = 0, double hi = 0);

}  // namespace kvsim::svg
