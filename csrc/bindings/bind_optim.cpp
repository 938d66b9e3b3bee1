// Optimizer steps (orbitfl.agent.optim). Every array is checked (dtype float32, C-contiguous,
// aligned, writeable where written, one length) and updated in place; nothing is allocated.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "checked_array.hpp"
#include "optim.hpp"

namespace orbitfl::bindings {

namespace {

// checked<float>() builds its message strings on every call (~3 us an array); this step runs once
// per training batch, so check cheaply and build messages only on failure (via checked<float>).
py::array fast_checked(py::handle obj, const char* name) {
  static const py::dtype f32 = py::dtype::of<float>();
  if (py::isinstance<py::array>(obj)) {
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (a.dtype().equal(f32) && (a.flags() & py::array::c_style) &&
        reinterpret_cast<std::uintptr_t>(a.data()) % alignof(float) == 0) {
      return a;
    }
  }
  return checked<float>(obj, name);  // raises the detailed TypeError/ValueError
}

float* wptr(py::array& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
  return static_cast<float*>(a.mutable_data());
}

void same_size(const py::array& p, const py::array& b, const char* name) {
  if (p.size() != b.size()) {
    throw py::value_error(std::string(name) + " has " + std::to_string(b.size()) + " values, p has " +
                          std::to_string(p.size()));
  }
}

}  // namespace

void register_optim(py::module_& m) {
  m.def(
      "adamw_step",
      [](py::object p_obj, py::object g_obj, py::object m_obj, py::object v_obj, float b1, float b2, float c1,
         float c2, float lr_c, float eps, float decay) {
        py::array p = fast_checked(p_obj, "p");
        py::array g = fast_checked(g_obj, "g");
        py::array mm = fast_checked(m_obj, "m");
        py::array v = fast_checked(v_obj, "v");
        same_size(p, g, "g");
        same_size(p, mm, "m");
        same_size(p, v, "v");
        float* pp = wptr(p, "p");
        float* mp = wptr(mm, "m");
        float* vp = wptr(v, "v");
        const float* gp = static_cast<const float*>(g.data());
        adamw_step(pp, gp, mp, vp, static_cast<std::size_t>(p.size()), b1, b2, c1, c2, lr_c, eps, decay);
      },
      py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("b1"), py::arg("b2"), py::arg("c1"), py::arg("c2"), py::arg("lr_c"),
      py::arg("eps"), py::arg("decay"));
  m.def(
      "sgd_step",
      [](py::object p_obj, py::object g_obj, py::object sq_obj, float lr, float beta) {
        py::array p = fast_checked(p_obj, "p");
        py::array g = fast_checked(g_obj, "g");
        py::array sq = fast_checked(sq_obj, "sq");
        same_size(p, g, "g");
        same_size(p, sq, "sq");
        float* pp = wptr(p, "p");
        float* sp = wptr(sq, "sq");
        const float* gp = static_cast<const float*>(g.data());
        sgd_step(pp, gp, sp, static_cast<std::size_t>(p.size()), lr, beta);
      },
      py::arg("p"), py::arg("g"), py::arg("sq"), py::arg("lr"), py::arg("beta"));
  m.def("optim_simd", &optim_simd);
}

}  // namespace orbitfl::bindings
