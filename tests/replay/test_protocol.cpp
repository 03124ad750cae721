// Evaluation protocol: compression point, evaluation and window queries, clear errors.
#include <doctest/doctest.h>

#include <string>

#include "core/error.h"
#include "replay/protocol.h"

using namespace kvsim;

namespace {

// 10 context, 4 question, 3 generated positions; queries stored from position `first_q` on.
TraceMeta meta_with(i64 first_q, i64 gen = 3) {
  TraceMeta m;
  m.path = "t.h5";
  m.segment.assign(10, kContext);
  m.segment.insert(m.segment.end(), 4, kQuestion);
  m.segment.insert(m.segment.end(), gen, kGenerated);
  m.seq_len = static_cast<i64>(m.segment.size());
  m.prefill_len = 14;
  for (i64 t = first_q; t < m.seq_len; ++t) m.q_pos.push_back(t);
  return m;
}

}  // namespace

TEST_CASE("question-agnostic: n_c = end of context, question and generated queries evaluated") {
  ProtocolOptions o;
  o.window = 4;
  const auto p = resolve_protocol(meta_with(0), o);
  CHECK(p.n_c == 10);
  CHECK(p.eval_rows.size() == 7);
  CHECK(p.eval_rows.front() == 10);
  CHECK(p.window_rows == std::vector<i64>{6, 7, 8, 9});
}

TEST_CASE("question-aware: n_c = prefill_len, only generated queries") {
  ProtocolOptions o;
  o.compression_point = CompressionPoint::aware;
  o.window = 2;
  const auto m = meta_with(5);
  const auto p = resolve_protocol(m, o);
  CHECK(p.n_c == 14);
  CHECK(p.eval_rows == std::vector<i64>{9, 10, 11});  // rows index /q_pos, which starts at 5
}

TEST_CASE("errors name the trace and field") {
  ProtocolOptions o;
  o.compression_point = CompressionPoint::aware;
  o.window = 2;
  try {
    resolve_protocol(meta_with(0, 0), o);
    FAIL("no error");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("t.h5: q_pos:") == 0);
    CHECK(msg.find("no stored query") != std::string::npos);
  }
  ProtocolOptions w;
  w.eval = EvalMode::window;
  w.window = 8;
  CHECK_THROWS_WITH_AS(resolve_protocol(meta_with(5), w), doctest::Contains("only 5 of them are stored"), Error);
  w.window = 11;
  CHECK_THROWS_WITH_AS(resolve_protocol(meta_with(0), w), doctest::Contains("exceeds the compression point"), Error);
  auto all_question = meta_with(0);
  all_question.segment[0] = kQuestion;  // context_end() = 0
  ProtocolOptions none;
  none.window = 0;
  CHECK_THROWS_WITH_AS(resolve_protocol(all_question, none), doctest::Contains("no context"), Error);
  CHECK_THROWS_AS(parse_eval_mode("all"), Error);
  CHECK(parse_compression_point("aware") == CompressionPoint::aware);
}
