#include "core/run_header.h"

#include "core/blas_kernels.h"
#include "core/sysinfo.h"

#ifndef KVSIM_VERSION
#error "KVSIM_VERSION comes from CMakeLists.txt (project VERSION)"
#endif

#ifndef KVSIM_SOURCE_REVISION
#error "KVSIM_SOURCE_REVISION comes from CMakeLists.txt (git describe)"
#endif

namespace kvsim {

const char* source_revision() { return KVSIM_SOURCE_REVISION; }

Json run_header(const std::string& command, const std::string& isa) {
  return Json{{"kvsim_version", KVSIM_VERSION},
              {"source_revision", source_revision()},
              {"command", command},
              {"created", iso_timestamp()},
              {"isa", isa},
              {"threads", max_threads()},
              {"blas", blas_json(blas_info())}};
}

}  // namespace kvsim
