#pragma once
// Checks every rule of trace format (v1 or v2) and returns one message per problem (empty = valid).
#include <string>
#include <vector>

namespace kvsim {

struct ValidateOptions {
  int window = 32;       // observation window that must be stored before the compression point
  bool scan_values = true;  // NaN/Inf scan over every tensor
};

std::vector<std::string> validate_trace(const std::string& path, const ValidateOptions& opt = {});

}  // namespace kvsim
