#include "core/text.h"

namespace kvsim {

namespace {

bool continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

std::size_t char_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if ((lead & 0xE0) == 0xC0) return 2;
  if ((lead & 0xF0) == 0xE0) return 3;
  if ((lead & 0xF8) == 0xF0) return 4;
  return 1;  // a stray continuation or invalid byte stands alone
}

}  // namespace

std::string utf8_char_at(const std::string& s, std::size_t pos) {
  if (pos >= s.size()) return "";
  std::size_t n = char_length(static_cast<unsigned char>(s[pos]));
  for (std::size_t i = 1; i < n; ++i)
    if (pos + i >= s.size() || !continuation(static_cast<unsigned char>(s[pos + i]))) return s.substr(pos, 1);
  return s.substr(pos, n);
}

std::string shorten_utf8(const std::string& s, std::size_t max_bytes) {
  if (s.size() <= max_bytes) return s;
  std::size_t cut = max_bytes > 3 ? max_bytes - 3 : 0;
  while (cut > 0 && continuation(static_cast<unsigned char>(s[cut]))) --cut;  // back to a character start
  return s.substr(0, cut) + "...";
}

std::string printable(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  auto escape = [&](unsigned char c) {
    static const char* hex = "0123456789abcdef";
    out += "\\x";
    out += hex[c >> 4];
    out += hex[c & 15];
  };
  for (std::size_t i = 0; i < s.size();) {
    const std::string ch = utf8_char_at(s, i);
    const auto lead = static_cast<unsigned char>(ch[0]);
    const bool invalid = ch.size() == 1 && lead >= 0x80;
    const bool control = (ch.size() == 1 && ((lead < 0x20 && lead != '\t') || lead == 0x7F)) ||
                         (ch.size() == 2 && lead == 0xC2 && static_cast<unsigned char>(ch[1]) < 0xA0);  // C1
    if (invalid || control)
      for (char c : ch) escape(static_cast<unsigned char>(c));
    else
      out += ch;
    i += ch.size();
  }
  return out;
}

}  // namespace kvsim
