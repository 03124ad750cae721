// SHA-256 against the FIPS 180-4 examples and the 1,000,000 x 'a' vector, fed in odd pieces.
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include <unistd.h>

#include "core/sha256.h"

using namespace kvsim;

namespace {
std::string sha(const std::string& s, std::size_t piece) {
  Sha256 h;
  for (std::size_t i = 0; i < s.size(); i += piece) h.update(s.data() + i, std::min(piece, s.size() - i));
  return h.hex();
}
}  // namespace

TEST_CASE("sha256: FIPS 180-4 vectors, any split of the input") {
  for (std::size_t piece : {1, 3, 63, 64, 65, 1000}) {
    CHECK(sha("", piece) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha("abc", piece) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", piece) ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  }
  CHECK(sha(std::string(1000000, 'a'), 4096) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("sha256: a file's digest, and a cancelled one returns at once") {
  // One file per process: ctest runs core_scalar and core_avx2 at the same time.
  const std::string path = std::string(KVSIM_BINARY_DIR) + "/test-tmp-sha256-" + std::to_string(getpid()) + ".bin";
  {
    std::ofstream out(path, std::ios::binary);
    out << "abc";
  }
  CHECK(file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::atomic<bool> cancel{true};
  CHECK(file_sha256(path, &cancel).empty());
  std::remove(path.c_str());
  CHECK_THROWS(file_sha256(path));
}
