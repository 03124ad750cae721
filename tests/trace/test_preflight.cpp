// The preflight child: its stderr (HDF5 error stacks, sanitizer reports) never reaches the
// user's; the parent's one line counts it and KVSIM_DEBUG=1 prints it.
#include <doctest/doctest.h>

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "trace/untrusted_file.h"

using namespace kvsim;

namespace {

// Runs fn with this process's stderr sent to a temporary file; returns what was written.
template <typename Fn>
std::string stderr_of(Fn&& fn) {
  std::fflush(stderr);
  std::FILE* tmp = std::tmpfile();
  const int saved = dup(2);
  dup2(fileno(tmp), 2);
  fn();
  std::fflush(stderr);
  dup2(saved, 2);
  close(saved);
  std::string out;
  std::rewind(tmp);
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, tmp)) > 0;) out.append(buf, n);
  std::fclose(tmp);
  return out;
}

const auto noisy_crash = [] {
  std::fputs("HDF5-DIAG: error #000\nHDF5-DIAG: error #001\n", stderr);
  std::fflush(stderr);
  std::abort();
};

}  // namespace

TEST_CASE("preflight: the child's stderr stays out of the user's; KVSIM_DEBUG=1 shows it") {
  unsetenv("KVSIM_DEBUG");
  std::string result;
  std::string err = stderr_of([&] { result = preflight("test metadata", noisy_crash); });
  CHECK(err.empty());
  CHECK(result.find("the HDF5 library crashed reading the test metadata") == 0);
  CHECK(result.find("2 line(s) of diagnostics, KVSIM_DEBUG=1 prints them") != std::string::npos);

  setenv("KVSIM_DEBUG", "1", 1);
  err = stderr_of([&] { result = preflight("test metadata", noisy_crash); });
  unsetenv("KVSIM_DEBUG");
  CHECK(err.find("HDF5-DIAG: error #001") != std::string::npos);
  CHECK(result.find("diagnostics") == std::string::npos);  // printed, so not counted again

  err = stderr_of([&] { result = preflight("test metadata", [] {}); });
  CHECK(result.empty());
  CHECK(err.empty());
}
