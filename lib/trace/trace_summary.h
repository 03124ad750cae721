#pragma once
// The "trace" object of every summary.json (replay, prefill, analyze): where the trace is and
// its shape, as docs/outputs.md lists it.
#include <string>

#include "core/json.h"
#include "trace/trace_meta.h"

namespace kvsim {

// sha256: the file's digest when the caller has it already (replay reads it on a second thread
// while it runs); empty: computed here.
Json trace_summary(const TraceMeta& meta, const std::string& path, const std::string& sha256 = "");

}  // namespace kvsim
