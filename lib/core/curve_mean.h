#pragma once
// A budget-free summary of a metric curve: its mean over the range of x, by trapezoids.
#include <vector>

namespace kvsim {

// The area under the piecewise-linear curve through (x[i], y[i]) divided by x.back() - x.front():
// y's mean over that range. x strictly increasing, at least two points.
double trapezoid_mean(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace kvsim
