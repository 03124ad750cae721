#pragma once
// Small dense float64 Cholesky factorisation, for the rules whose scores are quadratic forms
// with an inverse Gram matrix (leverage, cap): x^T A^{-1} x = ||L^{-1} x||^2.

namespace kvsim {

// A = L L^T in place: A is d x d row-major and symmetric (its lower triangle is read), L is
// written to the lower triangle. False when A is not positive definite (a pivot <= 0).
bool cholesky_lower(double* A, int d);

// x^T A^{-1} x from cholesky_lower's factor L, by forward substitution; y: d doubles of scratch.
double inverse_quadratic_form(const double* L, const double* x, int d, double* y);

}  // namespace kvsim
