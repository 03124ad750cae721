#pragma once
// In-memory form of a trace's root attributes and small datasets (trace format v1,
// architecture note section 3). Large per-layer tensors live in LayerData.
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/types.h"

namespace kvsim {

// How floats are stored on disk. Readers always widen to float32.
enum class StorageDtype { float32, float16, bfloat16 };
const char* dtype_name(StorageDtype d);

enum class RopeStyle { half, interleaved };

// Segment values of /tokens/segment.
enum Segment : std::uint8_t { kContext = 0, kQuestion = 1, kGenerated = 2 };

struct TraceMeta {
  std::string path;  // file it was read from (for error messages)
  std::string model;
  std::string source;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int hidden_size = 0;
  RopeStyle rope_style = RopeStyle::half;
  double rope_theta = 10000.0;
  std::string rope_scaling;  // JSON string, empty if none
  double attn_scale = 0.0;   // 1/sqrt(head_dim) when the file does not say otherwise
  i64 prefill_len = 0;

  i64 seq_len = 0;  // S = prompt + generated positions
  std::vector<std::int32_t> input_ids;  // [S]
  std::vector<std::uint8_t> segment;    // [S]
  std::vector<i64> q_pos;               // [Nq], sorted
  std::map<std::string, std::pair<i64, i64>> spans;  // /spans/<name>, half-open
  std::string text;

  StorageDtype dtype = StorageDtype::float32;  // storage of the q/k/v tensors
  bool has_o_proj = false;
  bool has_o = false;

  int group_size() const { return num_kv_heads > 0 ? num_heads / num_kv_heads : 0; }
  i64 num_queries() const { return static_cast<i64>(q_pos.size()); }
  // End of the context segment: first position whose segment is not context (question-agnostic
  // compression point).
  i64 context_end() const;
};

}  // namespace kvsim
