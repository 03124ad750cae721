#pragma once
// Index lists as users write them: "0-3,31" -> {0,1,2,3,31}; "all" or "" -> [0, limit).
#include <string>
#include <vector>

namespace kvsim {

// Sorted, unique; every index must lie in [0, limit). Throws kvsim::Error naming `what`.
std::vector<int> parse_index_list(const std::string& text, int limit, const std::string& what);

}  // namespace kvsim
