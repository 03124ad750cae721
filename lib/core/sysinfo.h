#pragma once
// Process facts reported in outputs: peak resident memory, thread count, wall clock.
#include <chrono>
#include <cstdint>
#include <string>

namespace kvsim {

std::int64_t peak_rss_bytes();   // getrusage ru_maxrss
// Process CPU seconds (user + system, all threads): on a shared machine, wall time also counts
// the time other processes held the cores; CPU time / threads approximates an idle machine.
double cpu_seconds();
std::int64_t current_rss_bytes();  // /proc/self/statm
int max_threads();               // omp_get_max_threads()
int online_cores();              // sysconf(_SC_NPROCESSORS_ONLN), at least 1
// Sets the OpenMP thread count from a --threads option (0 = keep the default) after checking it
// and OMP_NUM_THREADS against a sane maximum (4 x the cores): more threads than that only
// oversubscribe, and tens of thousands exhaust the process (a crash or a hang in libgomp).
void set_thread_count(long long requested, const std::string& option = "--threads");
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
