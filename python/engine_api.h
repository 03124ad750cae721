#pragma once
// The typed engine API for Python: _kvsim.replay(...) calls the library's replay() directly and
// returns its tables column by column (numpy arrays, no CSV in between), the summary and the kept
// masks; files are written only when out= names a folder. _kvsim.output_tables() returns every
// declared output column (core/columns.h) for the DataFrame builder and the closed loop's writers.
#include <pybind11/pybind11.h>

namespace kvsim::python {

void bind_engine(pybind11::module_& m);

}  // namespace kvsim::python
