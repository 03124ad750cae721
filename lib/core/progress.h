#pragma once
// A progress bar on stderr for long runs. Redraws in place on a terminal; elsewhere (logs, CI)
// prints a line every 10%. KVSIM_PROGRESS=0 silences it.
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "core/sysinfo.h"

namespace kvsim {

class Progress {
 public:
  Progress(std::string label, std::int64_t total);
  ~Progress();  // finishes the line
  // Thread-safe. On the thread that made the Progress it is also an interruption point
  // (core/interrupt.h): it may throw Interrupted, so call it outside OpenMP regions there.
  void advance(std::int64_t n = 1);
  void set_note(const std::string& note);

 private:
  void advance_locked(std::int64_t n);
  void draw(bool final);
  std::string label_, note_;
  std::int64_t total_, done_ = 0;
  int last_decile_ = -1;
  bool enabled_, tty_;
  double last_draw_ = -1;
  Stopwatch clock_;
  std::mutex mu_;
  std::thread::id owner_ = std::this_thread::get_id();
};

}  // namespace kvsim
