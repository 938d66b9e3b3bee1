// Placeholder: filled in by the kernel work of issue 2.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace orbitfl::bindings {
void register_cluster(py::module_& m) { (void)m; }
}  // namespace orbitfl::bindings
