#pragma once
// The first fields of every summary.json kvsim writes (replay, prefill, prefill --bench,
// analyze): kvsim_version, command, created (UTC), isa (the kernel set that ran) and threads.
#include <string>

#include "core/table_io.h"

namespace kvsim {

void write_run_header(JsonWriter& j, const std::string& command, const std::string& isa);

}  // namespace kvsim
