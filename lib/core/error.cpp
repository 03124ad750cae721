#include "core/error.h"

namespace kvsim {

void fail(const std::string& where, const std::string& field, const std::string& what) {
  std::string msg = where;
  if (!field.empty()) msg += ": " + field;
  msg += ": " + what;
  throw Error(msg);
}

}  // namespace kvsim
