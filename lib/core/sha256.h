#pragma once
// SHA-256 (FIPS 180-4) of bytes and of files, for provenance: summary.json records the trace's
// digest so a result names exactly the file it came from.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace kvsim {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t bytes);
  std::string hex();  // finishes; lowercase hex of the 32-byte digest

 private:
  void block(const std::uint8_t* p);
  std::uint32_t h_[8];
  std::uint8_t buf_[64];
  std::size_t used_ = 0;
  std::uint64_t total_ = 0;
};

// The digest of a whole file. Throws kvsim::Error "<path>: cannot read" when it cannot be read.
// With `cancel`, returns "" as soon as it is set (checked every MiB): a run that fails or is
// interrupted does not wait for the rest of a large file.
std::string file_sha256(const std::string& path, const std::atomic<bool>* cancel = nullptr);

}  // namespace kvsim
