#pragma once
// In-memory form of a trace's root attributes and small datasets (trace format v2, which reads
// v1 too: traces/README.md). Large per-layer tensors live in LayerData.
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/types.h"
#include "kernels/kernels.h"

namespace kvsim {

// How floats are stored on disk. Readers always widen to float32.
enum class StorageDtype { float32, float16, bfloat16 };
const char* dtype_name(StorageDtype d);

enum class RopeStyle { half, interleaved };

// Segment values of /tokens/segment.
enum Segment : std::uint8_t { kContext = 0, kQuestion = 1, kGenerated = 2 };

// Trace format versions this kvsim reads; it writes the newest.
constexpr int kTraceFormatVersion = 2;

// Optional attributes of a /layers/<l> group (format v2): what the model did differently in
// that layer. Empty / zero = the root attributes apply.
struct LayerAttrs {
  std::string attention_type;  // the model's layer type, e.g. "full_attention", "sliding_attention"
  i64 sliding_window = 0;      // the model attends to the last W positions only (0 = full); a
                               // valid trace has W >= seq_len, i.e. the window never bit
  double rope_theta = 0;       // per-layer RoPE base (0 = root rope_theta)
  std::string rope_scaling;    // per-layer rope_scaling JSON ("" = root rope_scaling)
};

struct TraceMeta {
  std::string path;  // file it was read from (for error messages)
  std::string model;
  std::string source;
  std::string model_sha256;      // optional: sha256 of the model file (GGUF models)
  std::string source_precision;  // optional: e.g. "gguf:Q4_1", "hf:bfloat16"
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int hidden_size = 0;
  RopeStyle rope_style = RopeStyle::half;
  double rope_theta = 10000.0;
  std::string rope_scaling;  // JSON string, empty if none
  double attn_scale = 0.0;   // 1/sqrt(head_dim) when the file does not say otherwise
  // v2: logit soft-capping (Gemma 2): logit = c * tanh(attn_scale * q.k / c); 0 = none.
  double attn_softcap = 0.0;
  // v2: RoPE rotates the first rotary_dim components of each head (partial rotary); 0 = all.
  int rotary_dim = 0;
  i64 prefill_len = 0;
  int version = kTraceFormatVersion;
  std::vector<LayerAttrs> layer_attrs;  // [num_layers] after reading; may be empty when writing

  i64 seq_len = 0;  // S = prompt + generated positions
  std::vector<std::int32_t> input_ids;  // [S]
  std::vector<std::uint8_t> segment;    // [S]
  std::vector<i64> q_pos;               // [Nq], sorted
  std::map<std::string, std::pair<i64, i64>> spans;  // /spans/<name>, half-open
  std::string text;

  StorageDtype dtype = StorageDtype::float32;  // storage of the q/k/v tensors
  bool has_o_proj = false;
  bool has_o = false;

  // The attention logit transform: attn_scale (1/sqrt(head_dim) when unset) and soft-capping.
  kernels::LogitSpec logits() const;
  int rotated_dims() const { return rotary_dim > 0 ? rotary_dim : head_dim; }
  // Per-layer RoPE parameters (the layer's override, else the root's).
  double layer_rope_theta(int layer) const;
  const std::string& layer_rope_scaling(int layer) const;
  int group_size() const { return num_kv_heads > 0 ? num_heads / num_kv_heads : 0; }
  i64 num_queries() const { return static_cast<i64>(q_pos.size()); }
  // End of the context segment: first position whose segment is not context (question-agnostic
  // compression point).
  i64 context_end() const;
};

}  // namespace kvsim
