// orbitfl._core: the compiled kernels. Each bind_*.cpp registers one family of kernels.
#include <pybind11/pybind11.h>

#include "common.hpp"

namespace py = pybind11;

namespace orbitfl::bindings {
void register_quant(py::module_& m);
void register_cluster(py::module_& m);
void register_optim(py::module_& m);
}  // namespace orbitfl::bindings

#ifndef ORBITFL_VERSION
#define ORBITFL_VERSION "0.0.0"
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "orbitfl compression kernels (C++17). See orbitfl/_core.pyi for signatures.";
  m.attr("__version__") = ORBITFL_VERSION;
#if defined(__aarch64__) && defined(__ARM_NEON)
  m.attr("simd") = "neon";
#elif defined(__SSE2__)
  m.attr("simd") = "sse2";
#else
  m.attr("simd") = "scalar";
#endif
  // InvalidArgument (and NonFinite) derive from std::invalid_argument, which pybind11 already maps
  // to ValueError; registering it explicitly keeps that true if the hierarchy changes.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const orbitfl::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  orbitfl::bindings::register_quant(m);
  orbitfl::bindings::register_cluster(m);
  orbitfl::bindings::register_optim(m);
}
