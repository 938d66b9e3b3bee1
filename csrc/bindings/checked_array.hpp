// Argument checks shared by the bindings. Each kernel reads the caller's array itself, so a wrong
// dtype is a TypeError (never a silent conversion) and a strided or misaligned view a ValueError.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>

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

// An output the caller lends for a new state (None: a fresh array): float32, C-contiguous,
// writable, n values, and sharing no byte with the inputs or the other outputs (the kernel reads
// those while it writes this). Reusing last round's retired state saves the kernel's pages being
// zero-filled anew each round.
inline py::array_t<float> out_array(py::handle obj, const char* name, std::size_t n,
                                    std::initializer_list<std::pair<const void*, std::size_t>> others) {
  if (obj.is_none()) return py::array_t<float>(static_cast<py::ssize_t>(n));
  py::array a = checked<float>(obj, name);
  if (static_cast<std::size_t>(a.size()) != n) {
    throw py::value_error(std::string(name) + " must have the size of x (" + std::to_string(n) + "), got " +
                          std::to_string(a.size()));
  }
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be writable");
  const auto* lo = static_cast<const char*>(a.data());
  const char* hi = lo + 4 * n;
  for (auto [p, bytes] : others) {
    const auto* o = static_cast<const char*>(p);
    if (n && o && bytes && lo < o + bytes && o < hi) {
      throw py::value_error(std::string(name) + " must not overlap the inputs or the other output");
    }
  }
  return py::reinterpret_borrow<py::array_t<float>>(a);
}

}  // namespace orbitfl::bindings
