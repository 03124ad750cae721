#include "core/output_path.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <random>

#include "core/error.h"

namespace kvsim {

namespace {

void refuse_non_regular(const std::string& path, const std::string& shown) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return;  // absent: fine
  if (S_ISREG(st.st_mode)) return;
  const char* kind = S_ISDIR(st.st_mode) ? "a folder" : S_ISLNK(st.st_mode) ? "a symbolic link"
                     : S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode) ? "a device" : S_ISFIFO(st.st_mode) ? "a fifo"
                     : S_ISSOCK(st.st_mode) ? "a socket" : "not a regular file";
  fail(shown, "", std::string("exists and is ") + kind +
                      "; kvsim writes an output by renaming a new file onto its path and will not replace it "
                      "(choose another path)");
}

// Fixed storage the signal handler can read without allocating.
constexpr int kSlots = 64;
constexpr std::size_t kPathMax = 4096;
char g_partial[kSlots][kPathMax];
volatile sig_atomic_t g_used[kSlots];
std::mutex g_mu;

char g_created_dir[kPathMax];
volatile sig_atomic_t g_created_used;

extern "C" void remove_partials_and_die(int sig) {
  for (int i = 0; i < kSlots; ++i)
    if (g_used[i]) unlink(g_partial[i]);
  if (g_created_used) rmdir(g_created_dir);
  static const char msg[] = "kvsim: interrupted; partial outputs removed\n";
  if (write(STDERR_FILENO, msg, sizeof msg - 1) < 0) {
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void check_output_target(const std::string& path) {
  refuse_non_regular(path, path);
}

std::string create_partial_file(const std::string& path) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}() ^ (static_cast<std::uint64_t>(getpid()) << 32)};
  for (int attempt = 0; attempt < 16; ++attempt) {
    std::uint64_t r;
    {
      std::lock_guard lock(mu);
      r = rng();
    }
    char tail[64];
    std::snprintf(tail, sizeof tail, ".%ld-%08llx.partial", static_cast<long>(getpid()),
                  static_cast<unsigned long long>(r & 0xffffffffull));
    const std::string partial = path + tail;
    register_partial_file(partial);  // before it exists: a signal in between finds nothing to remove
    const int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) {
      ::close(fd);
      return partial;
    }
    const int err = errno;
    unregister_partial_file(partial);
    if (err != EEXIST) fail(path, "", std::string("cannot create the file: ") + std::strerror(err) +
                                      " (check the folder exists and is writable)");
  }
  fail(path, "", "cannot create a unique partial file beside it");
}

void discard_partial_file(const std::string& partial) noexcept {
  ::unlink(partial.c_str());
  unregister_partial_file(partial);
}

void commit_partial_file(const std::string& partial, const std::string& path) {
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    const int err = errno;
    discard_partial_file(partial);
    fail(path, "", "cannot rename from " + partial + ": " + std::strerror(err));
  }
  unregister_partial_file(partial);
}

bool is_partial_name(const std::string& name) {
  return name.size() >= 8 && name.compare(name.size() - 8, 8, ".partial") == 0;
}

void register_partial_file(const std::string& partial_path) {
  if (partial_path.size() >= kPathMax) return;
  std::lock_guard lock(g_mu);
  for (int i = 0; i < kSlots; ++i)
    if (!g_used[i]) {
      std::memcpy(g_partial[i], partial_path.c_str(), partial_path.size() + 1);
      g_used[i] = 1;
      return;
    }
}

void unregister_partial_file(const std::string& partial_path) {
  std::lock_guard lock(g_mu);
  for (int i = 0; i < kSlots; ++i)
    if (g_used[i] && partial_path == g_partial[i]) {
      g_used[i] = 0;
      return;
    }
}

void register_created_folder(const std::string& dir) {
  if (dir.size() >= kPathMax) return;
  std::lock_guard lock(g_mu);
  g_created_used = 0;
  std::memcpy(g_created_dir, dir.c_str(), dir.size() + 1);
  g_created_used = 1;
}

void unregister_created_folder(const std::string& dir) {
  std::lock_guard lock(g_mu);
  if (g_created_used && dir == g_created_dir) g_created_used = 0;
}

void install_partial_file_cleanup() {
  struct sigaction sa {};
  sa.sa_handler = remove_partials_and_die;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
}

}  // namespace kvsim
