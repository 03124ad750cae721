#pragma once
// HDF5 1.10 trusts sizes stored in the file: some corrupt files (e.g. a damaged global heap
// holding variable-length strings) make it read out of bounds inside the library. A command
// line tool can at least turn that into its normal one-line error and exit status 1 instead of
// dying from a signal. While a CrashGuard lives, SIGSEGV/SIGBUS/SIGFPE/SIGILL/SIGABRT print
// "<prefix>: error: <path>: HDF5 crashed reading the file (corrupt file?)" and _exit(1).
// For CLIs only: the library itself never installs signal handlers.
#include <string>

namespace kvsim {

class CrashGuard {
 public:
  CrashGuard(const std::string& prefix, const std::string& path);
  ~CrashGuard();  // restores the previous handlers
  CrashGuard(const CrashGuard&) = delete;
  CrashGuard& operator=(const CrashGuard&) = delete;
};

}  // namespace kvsim
