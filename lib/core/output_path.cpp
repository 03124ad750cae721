#include "core/output_path.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <mutex>

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

extern "C" void remove_partials_and_die(int sig) {
  for (int i = 0; i < kSlots; ++i)
    if (g_used[i]) unlink(g_partial[i]);
  signal(sig, SIG_DFL);
  raise(sig);
}

}  // namespace

void check_output_target(const std::string& path) {
  refuse_non_regular(path, path);
  refuse_non_regular(path + ".partial", path + ".partial");
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

void install_partial_file_cleanup() {
  struct sigaction sa {};
  sa.sa_handler = remove_partials_and_die;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
}

void note_replacing(const std::string& command, const std::string& dir, const std::string& marker) {
  struct stat st {};
  if (stat((dir + "/" + marker).c_str(), &st) == 0)
    std::cerr << command << ": note: " << dir << " already holds results (" << marker << "); they are replaced\n";
}

}  // namespace kvsim
