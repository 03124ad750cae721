#include "replay/protocol.h"

#include <algorithm>

#include "core/error.h"

namespace kvsim {

const char* compression_point_name(CompressionPoint c) {
  return c == CompressionPoint::agnostic ? "agnostic" : "aware";
}
const char* eval_mode_name(EvalMode e) {
  switch (e) {
    case EvalMode::queries: return "queries";
    case EvalMode::window: return "window";
    case EvalMode::both: return "both";
  }
  return "?";
}

CompressionPoint parse_compression_point(const std::string& s) {
  if (s == "agnostic") return CompressionPoint::agnostic;
  if (s == "aware") return CompressionPoint::aware;
  fail("--compression-point", "", "'" + s + "' is not agnostic or aware");
}

EvalMode parse_eval_mode(const std::string& s) {
  if (s == "queries") return EvalMode::queries;
  if (s == "window") return EvalMode::window;
  if (s == "both") return EvalMode::both;
  fail("--eval", "", "'" + s + "' is not queries, window or both");
}

void set_decode_protocol(ProtocolOptions& opt, const std::string& protocol, i64 every, const std::string& start,
                         const std::string& admission) {
  if (protocol != "oneshot" && protocol != "decode") fail("--protocol", protocol, "is not oneshot or decode");
  if (start != "full" && start != "compressed") fail("--decode-start", start, "is not full or compressed");
  if (admission != "evict" && admission != "append-only") fail("--admission", admission, "is not evict or append-only");
  if (protocol == "oneshot") {
    if (every != 0) fail("--every", std::to_string(every), "applies to --protocol decode");
    if (admission != "evict") fail("--admission", admission, "applies to --protocol decode");
    return;
  }
  if (every < 1) fail("--every", std::to_string(every), "--protocol decode needs --every N >= 1 (positions between compressions)");
  if (opt.eval != EvalMode::queries)
    fail("--eval", eval_mode_name(opt.eval), "--protocol decode evaluates the queries after n_c only (--eval queries)");
  opt.decode_every = every;
  opt.decode_start_compressed = start == "compressed";
  opt.decode_append_only = admission == "append-only";
}

const char* decode_start_name(const ProtocolOptions& opt) { return opt.decode_start_compressed ? "compressed" : "full"; }
const char* admission_name(const ProtocolOptions& opt) { return opt.decode_append_only ? "append-only" : "evict"; }

std::string protocol_text(const ProtocolOptions& opt) {
  if (!opt.decode()) return "oneshot";
  return "decode(every=" + std::to_string(opt.decode_every) + ",start=" + decode_start_name(opt) +
         ",admission=" + admission_name(opt) + ")";
}

Protocol resolve_protocol(const TraceMeta& meta, const ProtocolOptions& opt) {
  Protocol p;
  p.n_c = opt.compression_point == CompressionPoint::agnostic ? meta.context_end() : meta.prefill_len;
  p.eval_queries = opt.eval != EvalMode::window;
  p.eval_window = opt.eval != EvalMode::queries;
  p.decode = opt.decode();
  const std::string cp = std::string(compression_point_name(opt.compression_point));
  if (p.n_c <= 0)
    fail(meta.path, cp == "agnostic" ? "tokens/segment" : "prefill_len",
         "compression point (" + cp + ") is 0: there is no context to compress");
  if (opt.window < 0) fail("--window", "", "must be >= 0");
  if (opt.window > p.n_c)
    fail("--window", "", std::to_string(opt.window) + " exceeds the compression point n_c = " + std::to_string(p.n_c));
  for (i64 r = 0; r < meta.num_queries(); ++r) {
    const i64 t = meta.q_pos[r];
    if (t >= p.n_c) p.eval_rows.push_back(r);
    if (t >= p.n_c - opt.window && t < p.n_c) p.window_rows.push_back(r);
  }
  if (p.eval_rows.empty())
    fail(meta.path, "q_pos",
         "no stored query at or after the compression point n_c = " + std::to_string(p.n_c) + " (" + cp +
             "): nothing to evaluate" + (cp == "aware" ? "; the trace has no generated tokens" : ""));
  if (p.eval_window && static_cast<i64>(p.window_rows.size()) != opt.window)
    fail(meta.path, "q_pos",
         "--eval " + std::string(eval_mode_name(opt.eval)) + " needs the queries of positions " +
             std::to_string(p.n_c - opt.window) + ".." + std::to_string(p.n_c - 1) + " but only " +
             std::to_string(p.window_rows.size()) + " of them are stored");
  if (p.eval_window && p.window_rows.empty()) fail("--window", "", "must be >= 1 with --eval window|both");
  return p;
}

}  // namespace kvsim
