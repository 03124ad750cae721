#pragma once
// The first fields of every summary.json kvsim writes (replay, prefill, prefill --bench,
// analyze): kvsim_version, source_revision, command, created (UTC), isa (the kernel set that ran), threads and
// blas (library, build, the kernels it ran and who chose them: core/blas_kernels.h).
#include <string>

#include "core/json.h"

namespace kvsim {

// A JSON object holding only those fields; the caller adds the rest after them.
Json run_header(const std::string& command, const std::string& isa);

// git describe of the source kvsim was built from (or "unknown (not built from a git checkout)").
const char* source_revision();

}  // namespace kvsim
