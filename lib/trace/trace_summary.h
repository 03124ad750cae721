#pragma once
// The "trace" object of every summary.json (replay, prefill, analyze): where the trace is and
// its shape, as docs/outputs.md lists it.
#include <string>

#include "core/json.h"
#include "trace/trace_meta.h"

namespace kvsim {

Json trace_summary(const TraceMeta& meta, const std::string& path);

}  // namespace kvsim
