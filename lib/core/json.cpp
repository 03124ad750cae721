#include "core/json.h"

#include "core/error.h"
#include "core/table_io.h"

namespace kvsim {

std::string json_text(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n"; }

Json parse_json(const std::string& text, const std::string& where) {
  try {
    return Json::parse(text);  // iterative parser: deep nesting cannot overflow the stack
  } catch (const Json::parse_error& e) {
    // e.what(): "[json.exception.parse_error.101] parse error at line 1, column 7: syntax error ..."
    std::string why = e.what();
    const std::string at = "parse error at ";
    if (const auto p = why.find(at); p != std::string::npos) why = why.substr(p + at.size());
    for (char& c : why)
      if (c == '\n' || c == '\r') c = ' ';
    throw Error(where + ": " + why);
  }
}

Json read_json_file(const std::string& path) { return parse_json(read_whole_file(path), path); }

}  // namespace kvsim
