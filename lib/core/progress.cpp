#include "core/progress.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <unistd.h>

#include "core/interrupt.h"

namespace kvsim {

Progress::Progress(std::string label, std::int64_t total)
    : label_(std::move(label)), total_(total > 0 ? total : 1) {
  const char* env = std::getenv("KVSIM_PROGRESS");
  enabled_ = !(env && std::strcmp(env, "0") == 0);
  tty_ = isatty(STDERR_FILENO);
}

Progress::~Progress() {
  std::lock_guard<std::mutex> lock(mu_);
  if (enabled_ && done_ > 0) draw(true);
}

void Progress::set_note(const std::string& note) {
  std::lock_guard<std::mutex> lock(mu_);
  note_ = note;
}

void Progress::advance(std::int64_t n) {
  advance_locked(n);
  if (std::this_thread::get_id() == owner_) throw_if_interrupted();
}

void Progress::advance_locked(std::int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  done_ += n;
  if (!enabled_) return;
  if (tty_) {
    const double t = clock_.seconds();
    if (t - last_draw_ >= 0.1 || done_ >= total_) {
      last_draw_ = t;
      draw(false);
    }
  } else {
    const int decile = static_cast<int>(10 * done_ / total_);
    if (decile != last_decile_) {
      last_decile_ = decile;
      draw(false);
    }
  }
}

void Progress::draw(bool final) {
  const double frac = static_cast<double>(done_) / static_cast<double>(total_);
  const double t = clock_.seconds();
  const double eta = frac > 0 ? t * (1 - frac) / frac : 0;
  if (tty_) {
    constexpr int width = 30;
    const int fill = static_cast<int>(frac * width);
    std::fprintf(stderr, "\r%s [%.*s%*s] %3d%% %6.1fs eta %5.1fs %s", label_.c_str(), fill,
                 "##############################", width - fill, "", static_cast<int>(100 * frac), t, eta,
                 note_.c_str());
    if (final) std::fputc('\n', stderr);
  } else if (!final) {
    std::fprintf(stderr, "%s: %3d%% (%lld/%lld) %.1fs %s\n", label_.c_str(), static_cast<int>(100 * frac),
                 static_cast<long long>(done_), static_cast<long long>(total_), t, note_.c_str());
  }
  std::fflush(stderr);
}

}  // namespace kvsim
