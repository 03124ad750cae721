#include "trace/float_headroom.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace kvsim {

namespace {

double max_abs(const avec<float>& x) {
  float m = 0.0f;
  for (float v : x) m = std::max(m, std::fabs(v));
  return m;
}

std::string sci(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

}  // namespace

HeadroomProblem float32_headroom(const TraceMeta& meta, double mq, double mk, double mv, double mw, bool has_o_proj) {
  constexpr double kLogitLimit = 1e30;   // |q.k| * scale; float32 max is 3.4e38
  constexpr double kSquareLimit = 1e36;  // sums of squared outputs over the hidden size
  const double d = meta.head_dim, H = meta.num_heads;
  const double logit = mq * mk * d * meta.attn_scale;
  if (logit > kLogitLimit)
    return {mq >= mk ? "q" : "k", "values up to " + sci(std::max(mq, mk)) + " (max |q| " + sci(mq) + ", max |k| " +
                                      sci(mk) + ") make attention logits up to " + sci(logit) +
                                      ", beyond what kvsim's float32 engine computes exactly (limit " +
                                      sci(kLogitLimit) + ")"};
  // Largest output entry through o_proj, and the squared norm the L2 metrics sum.
  const double out = has_o_proj ? mv * mw * H * d : mv;
  const double width = has_o_proj ? static_cast<double>(meta.hidden_size) : H * d;
  if (!(out * out * width <= kSquareLimit))
    return {!has_o_proj || mv * d >= mw ? "v" : "o_proj",
            "values up to " + sci(has_o_proj ? std::max(mv, mw) : mv) + " (max |v| " + sci(mv) +
                (has_o_proj ? ", max |o_proj| " + sci(mw) : "") + ") make projected outputs up to " + sci(out) +
                " whose squared norms overflow float32 (limit " + sci(kSquareLimit) + ")"};
  return {};
}

void check_float32_headroom(const TraceMeta& meta, const LayerData& data) {
  const HeadroomProblem p =
      float32_headroom(meta, max_abs(data.q), max_abs(data.k), max_abs(data.v), max_abs(data.o_proj), data.has_o_proj());
  if (!p.tensor.empty()) fail(meta.path, "/layers/" + std::to_string(data.layer) + "/" + p.tensor, p.what);
}

}  // namespace kvsim
