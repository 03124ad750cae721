#include "core/curve_mean.h"

namespace kvsim {

double trapezoid_mean(const std::vector<double>& x, const std::vector<double>& y) {
  double area = 0;
  for (std::size_t i = 0; i + 1 < x.size(); ++i) area += (x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2;
  return area / (x.back() - x.front());
}

}  // namespace kvsim
