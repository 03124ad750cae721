#pragma once
// Read-only numpy views of kvsim's float buffers that keep their owner alive (no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
#include <vector>

namespace kvsim::python {

namespace py = pybind11;

// A view of `data` with the given shape and element strides; `owner` is kept alive by the array.
template <typename T, typename Owner>
py::array view_of(const std::shared_ptr<Owner>& owner, const T* data, std::vector<py::ssize_t> shape,
                  std::vector<py::ssize_t> strides_elems) {
  std::vector<py::ssize_t> strides;
  for (auto s : strides_elems) strides.push_back(s * static_cast<py::ssize_t>(sizeof(T)));
  auto* hold = new std::shared_ptr<Owner>(owner);
  py::capsule base(hold, [](void* p) { delete static_cast<std::shared_ptr<Owner>*>(p); });
  py::array a(py::dtype::of<T>(), shape, strides, data, base);
  a.attr("setflags")(py::arg("write") = false);
  return a;
}

// A 1-D copy. (pybind11 2.10's array_t(count, ptr) repeats the first element under numpy 2:
// always pass the shape as a vector.)
template <typename T>
py::array_t<T> copy_1d(const T* data, std::size_t n) {
  return py::array_t<T>(std::vector<py::ssize_t>{static_cast<py::ssize_t>(n)}, data);
}

// Row-major contiguous strides of a shape.
inline std::vector<py::ssize_t> c_strides(const std::vector<py::ssize_t>& shape) {
  std::vector<py::ssize_t> s(shape.size(), 1);
  for (std::size_t i = shape.size(); i-- > 1;) s[i - 1] = s[i] * shape[i];
  return s;
}

}  // namespace kvsim::python
