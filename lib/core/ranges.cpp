#include "core/ranges.h"

#include <algorithm>
#include <sstream>

#include "core/error.h"

namespace kvsim {

static int parse_int(const std::string& s, const std::string& what) {
  std::size_t used = 0;
  int v = 0;
  try {
    v = std::stoi(s, &used);
  } catch (...) {
    used = 0;
  }
  if (used == 0 || used != s.size()) fail(what, "", "'" + s + "' is not an integer");
  return v;
}

std::vector<int> parse_index_list(const std::string& text, int limit, const std::string& what) {
  std::vector<int> out;
  if (text.empty() || text == "all") {
    for (int i = 0; i < limit; ++i) out.push_back(i);
    return out;
  }
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) fail(what, "", "empty item in '" + text + "'");
    const auto dash = item.find('-', 1);
    int lo, hi;
    if (dash == std::string::npos) {
      lo = hi = parse_int(item, what);
    } else {
      lo = parse_int(item.substr(0, dash), what);
      hi = parse_int(item.substr(dash + 1), what);
    }
    if (lo > hi) fail(what, "", "range '" + item + "' is decreasing");
    if (lo < 0 || hi >= limit)
      fail(what, "", "'" + item + "' is out of range [0, " + std::to_string(limit - 1) + "]");
    for (int i = lo; i <= hi; ++i) out.push_back(i);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace kvsim
