#pragma once
// UTF-8-aware pieces of text for error messages: a message may quote user input, and must not cut
// a multi-byte character in half (the terminal shows garbage, JSON consumers reject it).
#include <cstddef>
#include <string>

namespace kvsim {

// The whole UTF-8 character starting at byte pos (one byte if the input is not valid UTF-8 there).
std::string utf8_char_at(const std::string& s, std::size_t pos);
// s if it has at most max_bytes bytes, else its longest prefix of whole characters within
// max_bytes - 3 bytes followed by "...".
std::string shorten_utf8(const std::string& s, std::size_t max_bytes);
// s safe to print on a terminal: control characters (C0 but tab, DEL, C1: the bytes of ANSI/OSC
// escape sequences, newlines, bells) and bytes of invalid UTF-8 become \xNN; printable UTF-8 stays.
// Trace strings and error messages go through it (a trace could retitle or clear the terminal).
std::string printable(const std::string& s);

}  // namespace kvsim
