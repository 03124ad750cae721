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

}  // namespace kvsim
