#pragma once
// Process facts reported in outputs: peak resident memory, thread count, wall clock.
#include <chrono>
#include <cstdint>
#include <string>

namespace kvsim {

std::int64_t peak_rss_bytes();   // getrusage ru_maxrss
std::int64_t current_rss_bytes();  // /proc/self/statm
int max_threads();               // omp_get_max_threads()
std::string iso_timestamp();     // UTC, for summaries

class Stopwatch {
 public:
  Stopwatch() : t0_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }
  void reset() { t0_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace kvsim
