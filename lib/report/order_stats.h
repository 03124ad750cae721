#pragma once
// Order statistics the report's tables share.
#include <vector>

namespace kvsim::report {

// The middle value; the mean of the two middle values for an even count; 0 when empty.
double median(std::vector<double> v);
// Linear interpolation between order statistics (numpy's default): q in [0, 1], v not empty.
double quantile(std::vector<double> v, double q);

}  // namespace kvsim::report
