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
  // --protocol decode (replay/decode_protocol.h): re-compress every `decode_every` positions
  // after n_c; 0 = the one-shot protocol. decode_start: "full" or "compressed" at n_c.
  i64 decode_every = 0;
  bool decode_start_compressed = false;
  bool decode_append_only = false;  // --admission append-only
  bool decode() const { return decode_every > 0; }
};

// --protocol oneshot|decode, --every N, --decode-start full|compressed into `opt`; throws
// kvsim::Error naming the option.
void set_decode_protocol(ProtocolOptions& opt, const std::string& protocol, i64 every, const std::string& start,
                         const std::string& admission = "evict");
// The decode protocol's start ("full" | "compressed") and admission ("evict" | "append-only").
const char* decode_start_name(const ProtocolOptions& opt);
const char* admission_name(const ProtocolOptions& opt);
// "oneshot" or "decode(every=N,start=...,admission=...)": the protocol's name in sweep.json and unit keys.
std::string protocol_text(const ProtocolOptions& opt);

struct Protocol {
  i64 n_c = 0;
  std::vector<i64> eval_rows;    // rows of /q_pos with position >= n_c
  std::vector<i64> window_rows;  // rows of the window positions present in /q_pos
  bool eval_queries = true, eval_window = false;
  bool decode = false;  // ProtocolOptions::decode()
};

const char* compression_point_name(CompressionPoint c);
const char* eval_mode_name(EvalMode e);
CompressionPoint parse_compression_point(const std::string& s);  // throws kvsim::Error
EvalMode parse_eval_mode(const std::string& s);

// Throws kvsim::Error naming the trace and the field when there is nothing to compress, no
// evaluation query, or (for --eval window|both) window queries missing from /q_pos.
Protocol resolve_protocol(const TraceMeta& meta, const ProtocolOptions& opt);

}  // namespace kvsim
