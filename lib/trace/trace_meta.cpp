#include "trace/trace_meta.h"

namespace kvsim {

const char* dtype_name(StorageDtype d) {
  switch (d) {
    case StorageDtype::float32: return "float32";
    case StorageDtype::float16: return "float16";
    case StorageDtype::bfloat16: return "bfloat16";
  }
  return "?";
}

i64 TraceMeta::context_end() const {
  for (i64 i = 0; i < static_cast<i64>(segment.size()); ++i)
    if (segment[i] != kContext) return i;
  return static_cast<i64>(segment.size());
}

}  // namespace kvsim
