#pragma once
// kvsim's JSON: nlohmann::ordered_json (Debian's nlohmann-json3-dev), keys kept in the order
// they were written, which is the order the report shows them in.
#include <nlohmann/json.hpp>

#include <string>

namespace kvsim {

using Json = nlohmann::ordered_json;

// Compact text and a newline. Non-finite numbers become null; invalid UTF-8 (a corrupt trace's
// model name, say) is replaced by U+FFFD instead of throwing.
std::string json_text(const Json& j);

// A JSON document; `where` names its source in errors. Throws kvsim::Error
// "<where>: line L, column C: <what>" (one line) on malformed text.
Json parse_json(const std::string& text, const std::string& where);
// The JSON document in a file (parse_json with the path as `where`).
Json read_json_file(const std::string& path);

}  // namespace kvsim
