#pragma once
// Cooperative interruption for an embedding process (the Python module), where the process's
// signal handler is not kvsim's: long runs poll at safe points (Progress::advance, on the thread
// that made the Progress, never inside an OpenMP region) and unwind with Interrupted, so every
// partial file and created folder is removed as for any other error. The CLI installs no poll:
// its signal handler cleans up and ends the process (output_path.h).
#include "core/error.h"

namespace kvsim {

class Interrupted : public Error {
 public:
  Interrupted() : Error("interrupted") {}
};

// Returns true when the run must stop. Set by the embedder around a run; nullptr for none.
using InterruptPoll = bool (*)();
void set_interrupt_poll(InterruptPoll poll);

// Throws Interrupted when the installed poll asks for it.
void throw_if_interrupted();

}  // namespace kvsim
