#include <doctest/doctest.h>

#include "core/error.h"

TEST_CASE("fail() formats one line: where: field: what") {
  try {
    kvsim::fail("t.h5", "/q_pos", "not sorted");
    FAIL("no throw");
  } catch (const kvsim::Error& e) {
    CHECK(std::string(e.what()) == "t.h5: /q_pos: not sorted");
  }
}
