#include "core/core_share.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <string>

#include "core/sysinfo.h"

namespace kvsim {

CoreShare::CoreShare(int ceiling, bool adaptive)
    : ceiling_(std::max(1, ceiling)), current_(ceiling_), min_used_(ceiling_), max_used_(0), adaptive_(adaptive) {
  if (adaptive_) last_ = sample();
}

CoreShare::Sample CoreShare::sample() {
  Sample s;
  s.wall = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  s.self = cpu_seconds();
  // First line of /proc/stat: cpu user nice system idle iowait irq softirq steal ... (clock ticks).
  std::ifstream f("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  if (f >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal && cpu == "cpu") {
    const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    s.busy = (user + nice + system + irq + softirq + steal) / (tick > 0 ? tick : 100.0);
    s.ok = true;
  }
  return s;
}

int CoreShare::threads_for(double others, int cores, int ceiling) {
  const int busy = static_cast<int>(std::floor(std::max(0.0, others) + 0.5));
  return std::clamp(cores - busy, 1, std::max(1, ceiling));
}

void CoreShare::restore() const { omp_set_num_threads(ceiling_); }

int CoreShare::apply() {
  if (adaptive_) {
    const Sample now = sample();
    const double dt = now.wall - last_.wall;
    if (now.ok && last_.ok && dt >= 0.2) {
      const double others = ((now.busy - last_.busy) - (now.self - last_.self)) / dt;
      current_ = threads_for(others, online_cores(), ceiling_);
      last_ = now;
    } else if (!now.ok) {
      current_ = ceiling_;
    }
  }
  omp_set_num_threads(current_);
  min_used_ = std::min(min_used_, current_);
  max_used_ = std::max(max_used_, current_);
  return current_;
}

}  // namespace kvsim
