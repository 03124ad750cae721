#include "trace/untrusted_file.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>


// The cap is RLIMIT_AS = the address space already mapped + the limit. Under ASan that mapped
// space includes its shadow and allocator reservations, so the cap still bounds what a parse
// adds (large allocations map new memory; ASAN_OPTIONS=allocator_may_return_null=1 makes a
// refused one a failed malloc, as in a release build). TSan and MSan map memory lazily in ways
// RLIMIT_AS would break: no cap there.
#if defined(__SANITIZE_THREAD__)
#define KVSIM_NO_RLIMIT 1
#elif defined(__has_feature)
#if __has_feature(memory_sanitizer) || __has_feature(thread_sanitizer)
#define KVSIM_NO_RLIMIT 1
#endif
#endif

#if defined(__SANITIZE_ADDRESS__)
#define KVSIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KVSIM_ASAN 1
#endif
#endif
#ifdef KVSIM_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace kvsim {

namespace {

// Under ASan (the fuzz build), an HDF5 fault inside the child ends the child, as a crash does in
// a release build: the fuzzer's death callback, inherited through fork, must not record the
// input as a finding of the fuzzing process. KVSIM_PREFLIGHT_ASAN_LOG=PREFIX sends the child's
// report to PREFIX.<pid> instead of stderr.
void isolate_sanitizer_in_child() {
#ifdef KVSIM_ASAN
  __sanitizer_set_death_callback(nullptr);
  if (const char* log = std::getenv("KVSIM_PREFLIGHT_ASAN_LOG"); log && *log) __sanitizer_set_report_path(log);
#endif
}

unsigned long long current_address_space() {
  std::ifstream statm("/proc/self/statm");
  unsigned long long pages = 0;
  statm >> pages;
  return pages * static_cast<unsigned long long>(sysconf(_SC_PAGESIZE));
}

double env_double(const char* name, double dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  const double x = std::strtod(v, &end);
  return (end && *end == '\0' && x > 0) ? x : dflt;
}

// Child statuses written to the pipe (one byte) before _exit.
constexpr char kDone = 'D', kNoMemory = 'M';

}  // namespace

unsigned long long metadata_memory_cap(unsigned long long file_size) {
  const unsigned long long limit = preflight_limits().memory;
  if (file_size >= limit / 8) return limit;  // and no overflow of 8 x size
  return std::min<unsigned long long>(limit, (64ull << 20) + 8ull * file_size);
}

PreflightLimits preflight_limits() {
  PreflightLimits l;
  l.seconds = env_double("KVSIM_PREFLIGHT_SECONDS", l.seconds);
  l.memory = static_cast<unsigned long long>(env_double("KVSIM_PREFLIGHT_MEMORY_MB", 1024) * (1 << 20));
  return l;
}

MemoryCap::MemoryCap(unsigned long long limit) {
#ifndef KVSIM_NO_RLIMIT
  rlimit r{};
  if (getrlimit(RLIMIT_AS, &r) != 0) return;
  const unsigned long long want = current_address_space() + limit;
  if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur <= want) return;  // already tighter
  old_soft_ = r.rlim_cur;
  r.rlim_cur = want;
  active_ = setrlimit(RLIMIT_AS, &r) == 0;
#else
  (void)limit;
#endif
}

MemoryCap::~MemoryCap() {
  if (!active_) return;
  rlimit r{};
  getrlimit(RLIMIT_AS, &r);
  r.rlim_cur = old_soft_;
  setrlimit(RLIMIT_AS, &r);
}

std::string preflight(const char* what, const std::function<void()>& parse) {
  const char* off = std::getenv("KVSIM_PREFLIGHT");
  if (off && std::string(off) == "0") return "";
  const PreflightLimits lim = preflight_limits();
  int fds[2];
  if (pipe(fds) != 0) return "";  // cannot isolate: parse in-process as before
  // The child's stderr (HDF5 error stacks, sanitizer reports) goes to a private temporary file,
  // never to the user's: the parent's one line mentions it, KVSIM_DEBUG=1 prints it.
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> diagnostics(std::tmpfile(), &std::fclose);
  std::fflush(nullptr);         // nothing buffered may be written twice
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return "";
  }
  if (pid == 0) {
    close(fds[0]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a parent that was killed
    dup2(diagnostics ? fileno(diagnostics.get()) : open("/dev/null", O_WRONLY), 2);
    isolate_sanitizer_in_child();
    if (getppid() == 1) _exit(0);
    signal(SIGPIPE, SIG_IGN);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) signal(sig, SIG_DFL);  // the parent reports it
    char status = kDone;
    try {
      MemoryCap cap(lim.memory);
      parse();
    } catch (const std::bad_alloc&) {
      status = kNoMemory;
    } catch (...) {
      // The parse's own errors are reported by the in-process run.
    }
    ssize_t ignored = write(fds[1], &status, 1);
    (void)ignored;
    _exit(0);
  }
  close(fds[1]);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(lim.seconds);
  char status = 0;
  bool timed_out = false;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) {
      timed_out = true;
      break;
    }
    if (r > 0) {
      if (read(fds[0], &status, 1) != 1) status = 0;  // EOF without a status: the child died
    }
    break;
  }
  close(fds[0]);
  if (timed_out) kill(pid, SIGKILL);
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  // What the child wrote to its stderr: printed with KVSIM_DEBUG=1, else only counted in the note.
  std::string text;
  if (diagnostics) {
    std::rewind(diagnostics.get());
    char buf[4096];
    for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, diagnostics.get())) > 0 && text.size() < (1u << 20);)
      text.append(buf, n);
  }
  const char* debug = std::getenv("KVSIM_DEBUG");
  const bool show = debug && *debug && std::string(debug) != "0";
  if (show && !text.empty()) std::fprintf(stderr, "kvsim: preflight of the %s, diagnostics:\n%s\n", what, text.c_str());
  std::string note;
  if (!text.empty() && !show) {
    const long lines = std::count(text.begin(), text.end(), '\n') + (text.back() != '\n');
    note = "; " + std::to_string(lines) + " line(s) of diagnostics, KVSIM_DEBUG=1 prints them";
  }
  char secs[32];
  std::snprintf(secs, sizeof secs, "%g", lim.seconds);
  if (timed_out)
    return std::string("reading the ") + what + " did not finish within " + secs +
           " s (corrupt HDF5 structure; KVSIM_PREFLIGHT_SECONDS raises the limit" + note + ")";
  if (status == kNoMemory)
    return std::string("reading the ") + what + " needs more than " + std::to_string(lim.memory >> 20) +
           " MiB (corrupt sizes in the HDF5 structure?" + note + ")";
  if (status != kDone) {
    const std::string how = WIFSIGNALED(ws) ? std::string(" (signal: ") + strsignal(WTERMSIG(ws)) + ")" : "";
    return std::string("the HDF5 library crashed reading the ") + what + how + " (corrupt file" + note + ")";
  }
  return "";
}

}  // namespace kvsim
