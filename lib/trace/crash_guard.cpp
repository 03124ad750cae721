#include "trace/crash_guard.h"

#include <csignal>
#include <algorithm>
#include <cstring>
#include <vector>

#include <unistd.h>

namespace kvsim {

namespace {

constexpr int kSignals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
char g_message[4096];
std::size_t g_length = 0;
struct sigaction g_previous[sizeof(kSignals) / sizeof(kSignals[0])];
std::vector<char> g_alt_stack;  // the handler must run even after a stack overflow

extern "C" void on_fatal_signal(int) {
  // Only async-signal-safe calls here.
  ssize_t ignored = ::write(STDERR_FILENO, g_message, g_length);
  (void)ignored;
  ::_exit(1);
}

}  // namespace

CrashGuard::CrashGuard(const std::string& prefix, const std::string& path) {
  const std::string msg = prefix + ": error: " + path + ": HDF5 crashed reading the file (corrupt file?)\n";
  g_length = std::min(msg.size(), sizeof(g_message));
  std::memcpy(g_message, msg.data(), g_length);
  if (g_alt_stack.empty()) {
    g_alt_stack.resize(1 << 16);
    stack_t ss{};
    ss.ss_sp = g_alt_stack.data();
    ss.ss_size = g_alt_stack.size();
    sigaltstack(&ss, nullptr);
  }
  struct sigaction sa{};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
  for (std::size_t i = 0; i < sizeof(kSignals) / sizeof(kSignals[0]); ++i) sigaction(kSignals[i], &sa, &g_previous[i]);
}

CrashGuard::~CrashGuard() {
  for (std::size_t i = 0; i < sizeof(kSignals) / sizeof(kSignals[0]); ++i) sigaction(kSignals[i], &g_previous[i], nullptr);
}

}  // namespace kvsim
