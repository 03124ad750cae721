#include "attention/layer_reference.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"

namespace kvsim {

LayerReference::LayerReference(const LayerCache& cache, QuerySet set, NormKind nu)
    : set_(set), nu_(nu), n_q_(cache.count(set)), projected_(cache.data().has_o_proj()) {
  const LayerData& L = cache.data();
  const int H = L.num_heads, d = L.head_dim, D = L.hidden_size;
  const i64 n = n_q_;
  const std::size_t hn = static_cast<std::size_t>(H) * n;
  head_l1_.assign(hn, 0);
  head_l2_.assign(hn, 0);
  nu_max_.assign(hn, 0);
  y_l1_.assign(n, 0);
  y_l2_.assign(n, 0);
  if (n == 0) return;
  cache.precompute_norms(nu);
  const int width = projected_ ? D : d;
  avec<float> proj(hn * width);  // o^h W_o^h per head and query
#pragma omp parallel for schedule(dynamic, 1)
  for (int h = 0; h < H; ++h) {
    const float* o = cache.outputs(set, h);
    const double* T = cache.prob_sums(set, h);
    float* P = proj.data() + static_cast<std::size_t>(h) * n * width;
    if (projected_)
      kernels::sgemm(false, true, n, D, d, 1.f, o, d, L.o_proj.data() + static_cast<i64>(h) * d,
                     static_cast<i64>(H) * d, 0.f, P, D);
    else
      std::copy_n(o, n * d, P);
    const float* nuv = cache.value_norms(h, nu);
    for (i64 qi = 0; qi < n; ++qi) {
      // Outputs were formed from rows summing to T (1 up to rounding): normalise.
      float* p = P + qi * width;
      const float inv = static_cast<float>(1.0 / T[qi]);
      for (int e = 0; e < width; ++e) p[e] *= inv;
      head_l1_[h * n + qi] = kernels::abs_sum(p, width);
      head_l2_[h * n + qi] = std::sqrt(static_cast<double>(kernels::dot(p, p, width)));
      const i64 t = cache.pos(set, qi);
      double mx = 0;
      for (i64 j = 0; j <= t; ++j) mx = std::max(mx, static_cast<double>(nuv[j]));
      nu_max_[h * n + qi] = mx;
    }
  }
  // Layer output: y = sum_h o^h W_o^h (projected), else the concatenation of head outputs.
#pragma omp parallel for schedule(static)
  for (i64 qi = 0; qi < n; ++qi) {
    if (!projected_) {
      double l1 = 0, sq = 0;
      for (int h = 0; h < H; ++h) {
        l1 += head_l1_[h * n + qi];
        sq += head_l2_[h * n + qi] * head_l2_[h * n + qi];
      }
      y_l1_[qi] = l1;
      y_l2_[qi] = std::sqrt(sq);
      continue;
    }
    std::vector<float> y(D, 0.f);
    for (int h = 0; h < H; ++h) {
      const float* p = proj.data() + (static_cast<std::size_t>(h) * n + qi) * width;
      for (int e = 0; e < D; ++e) y[e] += p[e];
    }
    y_l1_[qi] = kernels::abs_sum(y.data(), D);
    y_l2_[qi] = std::sqrt(static_cast<double>(kernels::dot(y.data(), y.data(), D)));
  }
}

}  // namespace kvsim
