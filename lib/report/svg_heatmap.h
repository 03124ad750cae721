#pragma once
// SVG heat map (rows x columns) with a viridis colour scale, a colour bar and, when cells are
// large enough, the value printed in each cell. Non-finite cells are grey.
#include <string>
#include <vector>

namespace kvsim::svg {

std::string viridis(double t);  // t in [0, 1] -> "#rrggbb"

struct HeatMap {
  std::string title, xlabel, ylabel, value_label;
  std::vector<std::string> row_labels, col_labels;
  std::vector<double> values;  // row-major [rows][cols]
  bool log_color = false;      // colour by log10(value); values <= 0 are grey
  bool reverse = false;        // high values dark (e.g. "lower is better" metrics read better)
  std::string render() const;
};

}  // namespace kvsim::svg
