#pragma once
// One exception type for every user-facing failure. Messages are one line:
// "<file or object>: <field>: <what is wrong>", so the CLI can print them as is.
#include <stdexcept>
#include <string>

namespace kvsim {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws Error("where: field: what"); field may be empty.
[[noreturn]] void fail(const std::string& where, const std::string& field, const std::string& what);

}  // namespace kvsim
