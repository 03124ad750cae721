#include "engine_call.h"

#include <memory>
#include <new>
#include <thread>

#include "core/error.h"
#include "core/interrupt.h"
#include "core/sysinfo.h"
#include "core/text.h"
#include "kernels/isa.h"

namespace kvsim::python {

namespace py = pybind11;

namespace {

// Python's handler only records a signal while the engine holds no GIL, so the engine polls here
// (core/interrupt.h, from its progress path on the calling thread).
std::thread::id g_run_thread;
std::unique_ptr<py::error_already_set> g_pending;  // touched with the GIL held only

bool poll_python_signals() {
  if (std::this_thread::get_id() != g_run_thread) return false;
  py::gil_scoped_acquire gil;
  if (g_pending) return true;
  if (PyErr_CheckSignals() == 0) return false;
  g_pending = std::make_unique<py::error_already_set>();  // fetches (and clears) the error
  return true;
}

}  // namespace

void call_engine(const std::function<void()>& fn) {
  g_pending.reset();
  g_run_thread = std::this_thread::get_id();
  set_interrupt_poll(&poll_python_signals);
  struct Unset {
    ~Unset() { set_interrupt_poll(nullptr); }
  } unset;
  std::exception_ptr failed;
  {
    py::gil_scoped_release release;
    try {
      fn();
    } catch (...) {
      failed = std::current_exception();
    }
  }
  if (g_pending) {
    std::unique_ptr<py::error_already_set> e = std::move(g_pending);
    e->restore();
    throw py::error_already_set();
  }
  if (failed) std::rethrow_exception(failed);
}

void call_command(const std::string& name, const std::function<void()>& fn) {
  try {
    call_engine([&] {
      set_thread_count(0);           // as the CLI: a bad OMP_NUM_THREADS fails before any thread starts
      kernels::check_isa_setting();  // and so does a KVSIM_FORCE_ISA this CPU cannot honour
      fn();
    });
  } catch (const Error& e) {
    throw Error("kvsim " + name + ": error: " + printable(e.what()));
  } catch (const std::bad_alloc&) {
    throw Error("kvsim " + name + ": error: out of memory");
  }
}

}  // namespace kvsim::python
