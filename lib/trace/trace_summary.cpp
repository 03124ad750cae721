#include "trace/trace_summary.h"

#include "core/sha256.h"

namespace kvsim {

Json trace_summary(const TraceMeta& m, const std::string& path, const std::string& sha256) {
  return {{"path", path},
          {"sha256", sha256.empty() ? file_sha256(path) : sha256},
          {"model", m.model},
          {"source", m.source},
          {"model_sha256", m.model_sha256},
          {"source_precision", m.source_precision},
          {"num_layers", m.num_layers},
          {"num_heads", m.num_heads},
          {"num_kv_heads", m.num_kv_heads},
          {"head_dim", m.head_dim},
          {"hidden_size", m.hidden_size},
          {"seq_len", m.seq_len},
          {"prefill_len", m.prefill_len},
          {"dtype", dtype_name(m.dtype)},
          {"has_o_proj", m.has_o_proj}};
}

}  // namespace kvsim
