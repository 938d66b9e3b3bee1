// Argument checks shared by the bindings. Each kernel reads the caller's array itself, so a wrong
// dtype is a TypeError (never a silent conversion) and a strided or misaligned view a ValueError.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace orbitfl::bindings {

namespace py = pybind11;

inline std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

// The array behind `obj`, if it is a C-contiguous, aligned ndarray of exactly dtype T.
template <typename T>
py::array checked(py::handle obj, const char* name) {
  const py::dtype want = py::dtype::of<T>();
  // The name only for a message: str(dtype) runs NumPy's Python code (~2.5 us), and the default
  // recipe checks ~130 arrays an encode.
  auto want_name = [&want]() { return std::string(py::str(want)); };
  if (!py::isinstance<py::array>(obj)) {
    throw py::type_error(std::string(name) + " must be a numpy.ndarray of " + want_name() + ", got " +
                         type_name(obj));
  }
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().equal(want)) {
    throw py::type_error(std::string(name) + " must have dtype " + want_name() + ", got " +
                         std::string(py::str(a.dtype())));
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  // A view at an odd byte offset (np.frombuffer(..., offset=1)) would be read through a misaligned
  // T*, which C++ does not allow.
  if (reinterpret_cast<std::uintptr_t>(a.data()) % alignof(T) != 0) {
    throw py::value_error(std::string(name) + " must be aligned to " + std::to_string(alignof(T)) +
                          " bytes (copy it first)");
  }
  return a;
}

}  // namespace orbitfl::bindings
