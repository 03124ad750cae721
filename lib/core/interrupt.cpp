#include "core/interrupt.h"

#include <atomic>

namespace kvsim {

namespace {
std::atomic<InterruptPoll> g_poll{nullptr};
}  // namespace

void set_interrupt_poll(InterruptPoll poll) { g_poll.store(poll); }

void throw_if_interrupted() {
  const InterruptPoll poll = g_poll.load();
  if (poll && poll()) throw Interrupted();
}

}  // namespace kvsim
