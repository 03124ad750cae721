#pragma once
// Rank statistics in float64: average ranks (ties share the mean of their positions) and the
// Spearman correlation = Pearson correlation of the average ranks.
#include <vector>

namespace kvsim::report {

// 1-based average ranks of x (ascending). NaNs are not allowed (callers filter them).
std::vector<double> average_ranks(const std::vector<double>& x);
double pearson(const std::vector<double>& x, const std::vector<double>& y);  // NaN if a side is constant
double spearman(const std::vector<double>& x, const std::vector<double>& y);  // NaN if a side is constant

}  // namespace kvsim::report
