#pragma once
// Random prompt tensors for the prefill tests, owned together with their HeadsView.
#include <cmath>
#include <random>

#include "prefill/heads_view.h"

namespace kvsim::prefill::test {

struct RandomLayer {
  avec<float> q, k, v;
  HeadsView view;
  RandomLayer(int heads, int kv_heads, int d, i64 n, unsigned seed, float q_scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    q.resize(static_cast<std::size_t>(heads * n * d));
    k.resize(static_cast<std::size_t>(kv_heads * n * d));
    v.resize(k.size());
    for (auto& e : q) e = q_scale * nd(rng);
    for (auto& e : k) e = nd(rng);
    for (auto& e : v) e = nd(rng);
    view = HeadsView{heads, kv_heads, d, n, q.data(), n * d, k.data(), v.data(), n * d,
                     static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))};
  }
};

}  // namespace kvsim::prefill::test
