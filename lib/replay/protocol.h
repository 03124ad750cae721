#pragma once
// Evaluation protocol of a replay (rules doc 1.8): where the cache is compressed and which stored
// queries measure the perturbation.
#include <string>
#include <vector>

#include "core/types.h"
#include "trace/trace_meta.h"

namespace kvsim {

enum class CompressionPoint { agnostic, aware };  // end of context | prefill_len
enum class EvalMode { queries, window, both };

struct ProtocolOptions {
  CompressionPoint compression_point = CompressionPoint::agnostic;
  int window = 32;  // observation window w: positions n_c-w .. n_c-1
  EvalMode eval = EvalMode::queries;
};

struct Protocol {
  i64 n_c = 0;
  std::vector<i64> eval_rows;    // rows of /q_pos with position >= n_c
  std::vector<i64> window_rows;  // rows of the window positions present in /q_pos
  bool eval_queries = true, eval_window = false;
};

const char* compression_point_name(CompressionPoint c);
const char* eval_mode_name(EvalMode e);
CompressionPoint parse_compression_point(const std::string& s);  // throws kvsim::Error
EvalMode parse_eval_mode(const std::string& s);

// Throws kvsim::Error naming the trace and the field when there is nothing to compress, no
// evaluation query, or (for --eval window|both) window queries missing from /q_pos.
Protocol resolve_protocol(const TraceMeta& meta, const ProtocolOptions& opt);

}  // namespace kvsim
