#include "core/cholesky.h"

#include <cmath>

namespace kvsim {

bool cholesky_lower(double* A, int d) {
  for (int a = 0; a < d; ++a)
    for (int b = 0; b <= a; ++b) {
      double v = A[a * d + b];
      for (int k = 0; k < b; ++k) v -= A[a * d + k] * A[b * d + k];
      if (a == b) {
        if (!(v > 0)) return false;
        A[a * d + a] = std::sqrt(v);
      } else {
        A[a * d + b] = v / A[b * d + b];
      }
    }
  return true;
}

double inverse_quadratic_form(const double* L, const double* x, int d, double* y) {
  double h = 0;
  for (int a = 0; a < d; ++a) {
    double v = x[a];
    for (int k = 0; k < a; ++k) v -= L[a * d + k] * y[k];
    y[a] = v / L[a * d + a];
    h += y[a] * y[a];
  }
  return h;
}

}  // namespace kvsim
