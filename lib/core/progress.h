#pragma once
// A progress bar on stderr for long runs. Redraws in place on a terminal; elsewhere (logs, CI)
// prints a line every 10%. KVSIM_PROGRESS=0 silences it.
#include <cstdint>
#include <mutex>
#include <string>

#include "core/sysinfo.h"

namespace kvsim {

class Progress {
 public:
  Progress(std::string label, std::int64_t total);
  ~Progress();  // finishes the line
  void advance(std::int64_t n = 1);  // thread-safe
  void set_note(const std::string& note);

 private:
  void draw(bool final);
  std::string label_, note_;
  std::int64_t total_, done_ = 0;
  int last_decile_ = -1;
  bool enabled_, tty_;
  double last_draw_ = -1;
  Stopwatch clock_;
  std::mutex mu_;
};

}  // namespace kvsim
