#pragma once
// Corrupt HDF5 files can make the HDF5 1.10 library loop forever, allocate without bound or read
// out of bounds while it parses metadata (fuzzing found all three in variable-length string
// attributes and global-heap reads; docs/hostile-input.md). HDF5 offers no
// way to bound those paths from inside the process, so before kvsim parses a file's metadata it
// parses it once in a forked child under a time limit and a memory cap: a child that hangs,
// crashes or exhausts the cap becomes a one-line error naming the file, and this process never
// runs the path that failed. The in-process parse then runs under the same memory cap, so an
// allocation HDF5 would attempt from a corrupt size fails there as it did in the child.
#include <functional>
#include <string>

namespace kvsim {

struct PreflightLimits {
  double seconds = 3;                  // KVSIM_PREFLIGHT_SECONDS
  unsigned long long memory = 1ull << 30;  // extra address space allowed above the current size
};
PreflightLimits preflight_limits();  // defaults, overridden by the environment

// Runs parse() in a forked child (the parse's own errors are the caller's business: it runs them
// again in-process). Returns why the file must not be parsed here ("reading the <what> did not
// finish within 3 s ...", "... crashed ...", "... needs more than 1024 MiB ...") or "" when the
// child finished. KVSIM_PREFLIGHT=0 skips it (debugging only).
std::string preflight(const char* what, const std::function<void()>& parse);

// The address space parsing a file's metadata (superblock, object headers, strings) may add:
// metadata is stored uncompressed in the file, so a few times its size plus room for HDF5's own
// buffers, never more than the preflight cap. (A fuzzed superblock made H5Fopen ask for 2.4 GB.)
unsigned long long metadata_memory_cap(unsigned long long file_size);

// While alive, new address space of this process is capped at its current size + limit (the
// soft RLIMIT_AS, restored afterwards). No-op in sanitizer builds (they reserve huge shadow maps).
class MemoryCap {
 public:
  explicit MemoryCap(unsigned long long limit);
  ~MemoryCap();
  MemoryCap(const MemoryCap&) = delete;
  MemoryCap& operator=(const MemoryCap&) = delete;

 private:
  bool active_ = false;
  unsigned long long old_soft_ = 0;
};

}  // namespace kvsim
