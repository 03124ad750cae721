// Text for terminals and messages (core/text.h): control characters escaped, UTF-8 kept whole.
#include <doctest/doctest.h>

#include "core/text.h"

using kvsim::printable;

TEST_CASE("printable: escape sequences, newlines and invalid bytes become \\xNN, UTF-8 stays") {
  CHECK(printable("Llama-3.1 8B") == "Llama-3.1 8B");
  CHECK(printable("tab\tkept") == "tab\tkept");
  CHECK(printable("\x1b]0;pwned\x07\x1b[2J") == "\\x1b]0;pwned\\x07\\x1b[2J");
  CHECK(printable("two\nlines\r") == "two\\x0alines\\x0d");
  CHECK(printable("del\x7f") == "del\\x7f");
  CHECK(printable("csi \xc2\x9b" "2J") == "csi \\xc2\\x9b2J");  // C1 control (8-bit CSI)
  CHECK(printable("caf\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x98\x80");
  CHECK(printable("bad \xff\xfe tail \xe2\x80") == "bad \\xff\\xfe tail \\xe2\\x80");
  CHECK(printable("") == "");
}
