#pragma once
// Rotary position embedding (RoPE) in the trace's convention, so rules can undo it: the trace
// stores post-RoPE queries, and ExpectedAttention needs pre-RoPE ones (q_pre = R_t^T q_post).
// Pair i rotates components (a_i, b_i) by angle t * inv_freq_i:
//   half (HF rotate_half):       a_i = i,    b_i = i + d/2
//   interleaved (Meta/llama2.c): a_i = 2i,   b_i = 2i + 1
// x'_a = x_a cos - x_b sin,  x'_b = x_a sin + x_b cos.
// Partial rotary (trace format v2 rotary_dim r < d): only the first r components rotate, with
// d replaced by r above (pairs (i, i + r/2) for half); components r .. d-1 pass through.
#include <string>
#include <vector>

#include "core/types.h"
#include "trace/trace_meta.h"

namespace kvsim {

class Rope {
 public:
  // rope_scaling: the trace's JSON string ("" or "null" = none). Supported types: default,
  // linear, llama3; anything else throws kvsim::Error naming `where` and the field.
  // rotary_dim: rotated components (0 = head_dim).
  Rope(int head_dim, RopeStyle style, double theta, const std::string& rope_scaling = "",
       const std::string& where = "rope", int rotary_dim = 0);
  // The RoPE of one layer of a trace (its per-layer theta / scaling overrides, rotary_dim).
  static Rope from_meta(const TraceMeta& meta, int layer = -1);

  int head_dim() const { return d_; }
  int rotary_dim() const { return r_; }
  int pairs() const { return r_ / 2; }
  int a(int i) const { return style_ == RopeStyle::half ? i : 2 * i; }
  int b(int i) const { return style_ == RopeStyle::half ? i + r_ / 2 : 2 * i + 1; }
  // Frequencies as the model computes them: float32 inv_freq, float32 angle t * inv_freq.
  const std::vector<float>& inv_freq() const { return inv_freq_; }
  double angle(int i, i64 pos) const {
    return static_cast<double>(static_cast<float>(pos) * inv_freq_[i]);
  }

  void rotate(const float* x, i64 pos, float* out) const;    // out = R_pos x
  void derotate(const float* x, i64 pos, float* out) const;  // out = R_pos^T x (inverse)
  // Mean rotation over positions [first, first + count): per pair i the 2x2 block
  // [[c_i, -s_i], [s_i, c_i]] with c_i = mean cos, s_i = mean sin (an average of rotations).
  void mean_rotation(i64 first, i64 count, std::vector<double>& c, std::vector<double>& s) const;

 private:
  int d_, r_;
  RopeStyle style_;
  std::vector<float> inv_freq_;
};

}  // namespace kvsim
