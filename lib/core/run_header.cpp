#include "core/run_header.h"

#include "core/sysinfo.h"

#ifndef KVSIM_VERSION
#error "KVSIM_VERSION comes from CMakeLists.txt (project VERSION)"
#endif

namespace kvsim {

void write_run_header(JsonWriter& j, const std::string& command, const std::string& isa) {
  j.field("kvsim_version", KVSIM_VERSION).field("command", command).field("created", iso_timestamp());
  j.field("isa", isa).field("threads", max_threads());
}

}  // namespace kvsim
