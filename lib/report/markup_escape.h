#pragma once
// Escaping for text and attribute values in the report's HTML and its inline SVG (one rule for
// both: & < > " and ' become entities).
#include <string>

namespace kvsim::report {

std::string html_escape(const std::string& text);

}  // namespace kvsim::report
