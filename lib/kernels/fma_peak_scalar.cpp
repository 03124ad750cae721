// Scalar FMA loop for the peak measurement (the reference kernel set: one lane).
#include "kernels/fma_peak.h"

namespace kvsim::kernels::scalar {

float fma_loop(i64 iters) {
  float a[12];
  for (int i = 0; i < 12; ++i) a[i] = 1.0f + 0.001f * static_cast<float>(i);
  const float m = 0.999999f, c = 1e-7f;
  for (i64 it = 0; it < iters; ++it)
    for (int i = 0; i < 12; ++i) a[i] = a[i] * m + c;  // mul + add: generic code has no FMA instruction
  float s = 0;
  for (float x : a) s += x;
  return s;
}

}  // namespace kvsim::kernels::scalar
