// Average ranks and Spearman: hand-computed fixtures and a brute-force float64 check.
#include <doctest/doctest.h>

#include <cmath>
#include <random>

#include "report/rank_stats.h"

using namespace kvsim::report;

namespace {

// O(n^2) average rank: 1 + (# smaller) + (# equal others) / 2.
std::vector<double> brute_ranks(const std::vector<double>& x) {
  std::vector<double> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    double less = 0, equal = 0;
    for (std::size_t j = 0; j < x.size(); ++j) {
      if (x[j] < x[i]) less += 1;
      if (j != i && x[j] == x[i]) equal += 1;
    }
    r[i] = 1 + less + equal / 2;
  }
  return r;
}

double brute_pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, syy = 0, sxy = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sx += x[i]; sy += y[i]; sxx += x[i] * x[i]; syy += y[i] * y[i]; sxy += x[i] * y[i];
  }
  return (n * sxy - sx * sy) / std::sqrt((n * sxx - sx * sx) * (n * syy - sy * sy));
}

}  // namespace

TEST_CASE("average ranks: ties share the mean position") {
  const auto r = average_ranks({10, 20, 10, 30, 20, 10});
  // 10s at positions 1,2,3 -> 2; 20s at 4,5 -> 4.5; 30 -> 6
  CHECK(r == std::vector<double>{2, 4.5, 2, 6, 4.5, 2});
}

TEST_CASE("spearman: hand-computed values") {
  CHECK(spearman({1, 2, 3, 4}, {10, 20, 30, 40}) == doctest::Approx(1.0));
  CHECK(spearman({1, 2, 3, 4}, {4, 3, 2, 1}) == doctest::Approx(-1.0));
  // No ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)); ranks y = 2,1,4,3,5 -> sum d^2 = 4 -> 1 - 24/120 = 0.8
  CHECK(spearman({1, 2, 3, 4, 5}, {0.2, 0.1, 0.4, 0.3, 0.5}) == doctest::Approx(0.8).epsilon(1e-15));
  // Ties: x ranks 1.5,1.5,3,4 ; y ranks 1,2,3,4 -> Pearson of those = 0.9486832980505138
  CHECK(spearman({5, 5, 6, 7}, {1, 2, 3, 4}) == doctest::Approx(0.9486832980505138).epsilon(1e-14));
  CHECK(std::isnan(spearman({1, 1, 1}, {1, 2, 3})));
}

TEST_CASE("spearman matches a brute-force float64 computation, with and without ties") {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 20; ++trial) {
    const int n = 3 + trial * 7;
    std::vector<double> x(n), y(n);
    for (int i = 0; i < n; ++i) {
      x[i] = trial % 2 ? std::floor(std::uniform_real_distribution<double>(0, 5)(rng))  // many ties
                       : std::normal_distribution<double>()(rng);
      y[i] = 0.5 * x[i] + std::normal_distribution<double>()(rng);
    }
    const auto rx = brute_ranks(x), ry = brute_ranks(y);
    CHECK(average_ranks(x) == rx);
    CHECK(spearman(x, y) == doctest::Approx(brute_pearson(rx, ry)).epsilon(1e-12));
  }
}
