// Attention logit soft-capping (kernels.h LogitSpec). Not dispatched: tanh is rare enough
// (Gemma 2 traces only) that the scalar loop is the implementation on every ISA.
#include <cmath>

#include "kernels/kernels.h"

namespace kvsim::kernels {

void softcap_inplace(float* x, i64 n, float c) {
  for (i64 j = 0; j < n; ++j)
    if (x[j] != -INFINITY) x[j] = c * std::tanh(x[j] / c);
}

float logit_softmax_inplace(float* x, i64 n, const LogitSpec& spec) {
  if (!(spec.softcap > 0)) return scaled_softmax_inplace(x, n, spec.scale);
  for (i64 j = 0; j < n; ++j) x[j] *= spec.scale;
  softcap_inplace(x, n, spec.softcap);
  return softmax_inplace(x, n);
}

}  // namespace kvsim::kernels
