#pragma once
// Running the engine from Python: without the GIL (Python rules take it back), with Ctrl-C polled
// from the engine's progress path, and a Python exception raised by a signal handler re-raised
// once the engine has unwound (and removed its partial files).
#include <pybind11/pybind11.h>

#include <functional>
#include <string>

namespace kvsim::python {

void call_engine(const std::function<void()>& fn);

// kvsim::Error (and out of memory) as the CLI words it: "kvsim NAME: error: ..." in a KvsimError.
void call_command(const std::string& name, const std::function<void()>& fn);

}  // namespace kvsim::python
