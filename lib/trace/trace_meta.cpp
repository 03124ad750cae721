#include "trace/trace_meta.h"

#include <cmath>

namespace kvsim {

const char* dtype_name(StorageDtype d) {
  switch (d) {
    case StorageDtype::float32: return "float32";
    case StorageDtype::float16: return "float16";
    case StorageDtype::bfloat16: return "bfloat16";
  }
  return "?";
}

i64 TraceMeta::context_end() const {
  for (i64 i = 0; i < static_cast<i64>(segment.size()); ++i)
    if (segment[i] != kContext) return i;
  return static_cast<i64>(segment.size());
}

kernels::LogitSpec TraceMeta::logits() const {
  kernels::LogitSpec s;
  s.scale = attn_scale > 0 ? static_cast<float>(attn_scale) : 1.0f / std::sqrt(static_cast<float>(head_dim));
  s.softcap = static_cast<float>(attn_softcap);
  return s;
}

double TraceMeta::layer_rope_theta(int layer) const {
  if (layer >= 0 && layer < static_cast<int>(layer_attrs.size()) && layer_attrs[layer].rope_theta > 0)
    return layer_attrs[layer].rope_theta;
  return rope_theta;
}

const std::string& TraceMeta::layer_rope_scaling(int layer) const {
  if (layer >= 0 && layer < static_cast<int>(layer_attrs.size()) && !layer_attrs[layer].rope_scaling.empty())
    return layer_attrs[layer].rope_scaling;
  return rope_scaling;
}

}  // namespace kvsim
