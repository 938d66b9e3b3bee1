// Python bindings of the clustering kernels: 1-D k-means, GCC, loss-aware quantization.
// Arguments are checked and cast here under the GIL (wrong dtype -> TypeError, bad shape or
// value -> ValueError); the kernels then run on the caller's buffers with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bitpack.hpp"
#include "bindings/checked_array.hpp"
#include "common.hpp"
#include "gcc.hpp"
#include "kmeans1d.hpp"
#include "laq.hpp"

namespace py = pybind11;

namespace orbitfl::bindings {
namespace {


template <typename T>
const T* ptr(const py::array& a) {
  return static_cast<const T*>(a.data());
}

// Integers as operator.index takes them, except bool: k=True is a mistake, not k=1.
long long int_in(const py::handle& h, const char* name) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr())) {
    throw py::type_error(std::string(name) + " must be an int, got " + type_name(h));
  }
  py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
  if (!v) throw py::error_already_set();
  int overflow = 0;
  long long r = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow != 0) throw py::value_error(std::string(name) + " is out of range");
  return r;
}

int int_range(const py::handle& h, const char* name, long long lo, long long hi, const std::string& what) {
  long long v = int_in(h, name);
  if (v < lo || v > hi) throw py::value_error(std::string(name) + " must be " + what + ", got " + std::to_string(v));
  return static_cast<int>(v);
}

std::size_t count_in(const py::handle& h, const char* name) {
  long long v = int_in(h, name);
  if (v < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

std::uint64_t seed_in(const py::handle& h) {
  if (PyBool_Check(h.ptr()) || !PyIndex_Check(h.ptr())) throw py::type_error("seed must be an int, got " + type_name(h));
  py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(h.ptr()));
  if (!v) throw py::error_already_set();
  unsigned long long r = PyLong_AsUnsignedLongLong(v.ptr());
  if (r == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error("seed must be in 0..2**64-1, got " + std::string(py::str(v)));
  }
  return r;
}

double real_in(const py::handle& h, const char* name) {
  bool ok = !PyBool_Check(h.ptr()) &&
            (PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr()) ||
             py::isinstance(h, py::module_::import("numpy").attr("number")));
  if (ok) ok = !py::isinstance(h, py::module_::import("numpy").attr("complexfloating"));
  if (!ok) throw py::type_error(std::string(name) + " must be a real number, got " + type_name(h));
  double v = PyFloat_AsDouble(h.ptr());
  if (v == -1.0 && PyErr_Occurred()) throw py::error_already_set();
  if (!std::isfinite(v)) throw py::value_error(std::string(name) + " must be finite, got " + std::string(py::str(h)));
  return v;
}

KMeansMethod method_in(const py::handle& h) {
  if (!py::isinstance<py::str>(h)) throw py::type_error("method must be a str, got " + type_name(h));
  return parse_kmeans_method(h.cast<std::string>());
}

// kmeans1d's and kmeans_centroids' arguments, checked under the GIL in one place.
struct KMeansArgs {
  py::array x;
  int k;
  KMeansMethod method;
  int iters;
  std::uint64_t seed;
};

KMeansArgs kmeans_args(const py::object& x, const py::object& k, const py::object& method, const py::object& iters,
                       const py::object& seed) {
  py::array xa = checked<float>(x, "x");
  const int kk = int_range(k, "k", 1, kKMeansMaxK, "in 1..256");
  const KMeansMethod m = method_in(method);
  const int it = int_range(iters, "iters", 0, INT32_MAX, ">= 0");
  return KMeansArgs{xa, kk, m, it, seed_in(seed)};
}

py::tuple kmeans1d_py(const py::object& x, const py::object& k, const py::object& method, const py::object& iters,
                      const py::object& seed) {
  const KMeansArgs a = kmeans_args(x, k, method, iters, seed);
  const std::size_t n = static_cast<std::size_t>(a.x.size());
  py::array_t<float> c(a.k);
  py::array_t<std::uint8_t> labels(static_cast<py::ssize_t>(n));
  const float* xp = ptr<float>(a.x);
  float* cp = c.mutable_data();
  std::uint8_t* lp = labels.mutable_data();
  double sse;
  {
    py::gil_scoped_release release;
    sse = kmeans1d(xp, n, a.k, a.method, a.iters, a.seed, cp, lp);
  }
  return py::make_tuple(c, labels, sse);
}

py::array_t<float> kmeans_centroids_py(const py::object& x, const py::object& k, const py::object& method,
                                       const py::object& iters, const py::object& seed) {
  const KMeansArgs a = kmeans_args(x, k, method, iters, seed);
  const std::size_t n = static_cast<std::size_t>(a.x.size());
  py::array_t<float> c(a.k);
  const float* xp = ptr<float>(a.x);
  float* cp = c.mutable_data();
  {
    py::gil_scoped_release release;
    kmeans1d(xp, n, a.k, a.method, a.iters, a.seed, cp, nullptr);
  }
  return c;
}

py::tuple kmeans_assign_py(const py::object& x, const py::object& centroids) {
  py::array xa = checked<float>(x, "x");
  py::array ca = checked<float>(centroids, "centroids");
  const std::size_t n = static_cast<std::size_t>(xa.size());
  const py::ssize_t k = ca.size();
  if (k < 1 || k > kKMeansMaxK) {
    throw py::value_error("centroids must have 1..256 entries, got " + std::to_string(k));
  }
  py::array_t<std::uint8_t> labels(static_cast<py::ssize_t>(n));
  const float* xp = ptr<float>(xa);
  const float* cp = ptr<float>(ca);
  std::uint8_t* lp = labels.mutable_data();
  double sse;
  {
    py::gil_scoped_release release;
    sse = kmeans_assign(xp, n, cp, static_cast<int>(k), lp);
  }
  return py::make_tuple(labels, sse);
}

py::array_t<std::uint8_t> kmeans_pack_py(const py::object& x, const py::object& centroids, const py::object& bits) {
  py::array xa = checked<float>(x, "x");
  py::array ca = checked<float>(centroids, "centroids");
  const std::size_t n = static_cast<std::size_t>(xa.size());
  const py::ssize_t k = ca.size();
  if (k < 1 || k > kKMeansMaxK) {
    throw py::value_error("centroids must have 1..256 entries, got " + std::to_string(k));
  }
  const int b = int_range(bits, "bits", 1, 8, "in 1..8");
  py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(packed_size(n, b)));
  const float* xp = ptr<float>(xa);
  const float* cp = ptr<float>(ca);
  std::uint8_t* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    kmeans_pack(xp, n, cp, static_cast<int>(k), b, op);
  }
  return out;
}

// The LAQ fit's shared arguments (max_iter, tol, and d the size of x), checked under the GIL.
struct FitArgs {
  int max_iter;
  double tol;
  std::size_t n;
};

FitArgs fit_args(const py::array& xa, const py::array& da, const py::object& max_iter, const py::object& tol) {
  const int mi = int_range(max_iter, "max_iter", 0, INT32_MAX, ">= 0");
  const double tl = real_in(tol, "tol");
  if (tl < 0.0) throw py::value_error("tol must be >= 0, got " + std::string(py::str(tol)));
  const std::size_t n = static_cast<std::size_t>(xa.size());
  if (static_cast<std::size_t>(da.size()) != n) {
    throw py::value_error("d must have the size of x (" + std::to_string(n) + "), got " + std::to_string(da.size()));
  }
  return {mi, tl, n};
}

py::tuple laq_quantize_py(const py::object& x, const py::object& d, const py::object& bits,
                          const py::object& max_iter, const py::object& tol, const py::object& alpha) {
  py::array xa = checked<float>(x, "x");
  py::array da = checked<float>(d, "d");
  const int b = int_range(bits, "bits", 1, 8, "in 1..8");
  const auto [mi, tl, n] = fit_args(xa, da, max_iter, tol);
  py::array_t<std::uint8_t> packed(static_cast<py::ssize_t>(packed_size(n, b)));
  const float* xp = ptr<float>(xa);
  const float* dp = ptr<float>(da);
  std::uint8_t* pp = packed.mutable_data();
  const bool given = !alpha.is_none();
  const double a = given ? real_in(alpha, "alpha") : 0.0;
  if (given && a < 0.0) throw py::value_error("alpha must be >= 0, got " + std::string(py::str(alpha)));
  LaqResult r;
  {
    py::gil_scoped_release release;
    r = given ? laq_quantize_at(xp, dp, n, b, a, pp) : laq_quantize(xp, dp, n, b, mi, tl, pp);
  }
  return py::make_tuple(packed, r.alpha, r.error);
}

py::tuple laq_errors_py(const py::object& x, const py::object& d, const py::object& widths,
                        const py::object& max_iter, const py::object& tol) {
  py::array xa = checked<float>(x, "x");
  py::array da = checked<float>(d, "d");
  if (py::isinstance<py::str>(widths) || py::isinstance<py::bytes>(widths) || !py::isinstance<py::sequence>(widths)) {
    throw py::type_error("widths must be a sequence of ints, got " + type_name(widths));
  }
  std::vector<int> w;
  for (const py::handle& h : py::reinterpret_borrow<py::sequence>(widths)) {
    w.push_back(int_range(h, "widths", 0, 8, "in 0..8"));
  }
  const auto [mi, tl, n] = fit_args(xa, da, max_iter, tol);
  py::array_t<double> alphas(static_cast<py::ssize_t>(w.size()));
  py::array_t<double> errors(static_cast<py::ssize_t>(w.size()));
  const float* xp = ptr<float>(xa);
  const float* dp = ptr<float>(da);
  double* ap = alphas.mutable_data();
  double* ep = errors.mutable_data();
  {
    py::gil_scoped_release release;
    laq_errors(xp, dp, n, w.data(), w.size(), mi, tl, ap, ep);
  }
  return py::make_tuple(alphas, errors);
}

py::array_t<float> laq_dequantize_py(const py::object& packed, const py::object& n, const py::object& bits,
                                     const py::object& alpha) {
  py::array pa = checked<std::uint8_t>(packed, "packed");
  const std::size_t nn = count_in(n, "n");
  const int b = int_range(bits, "bits", 1, 8, "in 1..8");
  const double a = real_in(alpha, "alpha");
  py::array_t<float> out(static_cast<py::ssize_t>(nn));
  const std::uint8_t* pp = ptr<std::uint8_t>(pa);
  const std::size_t plen = static_cast<std::size_t>(pa.size());
  float* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    laq_dequantize(pp, plen, nn, b, a, op);
  }
  return out;
}

// gcc_encode_py and gcc_encode_ef_py: the same checks in the same order and the same outputs.
// Without residual_out (in place) the new residual overwrites `residual`; with it, `residual` is
// only read and the new one goes into *residual_out's array (lent, or new when it is None), so the
// caller's state stays intact if the encode fails, without copying it first.
py::tuple gcc_encode_checked(const py::object& x, const py::object& k, const py::object& rho,
                             const py::object& residual, const py::object& iters, const py::object& seed,
                             const py::object& method, const py::object* residual_out) {
  const bool in_place = residual_out == nullptr;
  py::array xa = checked<float>(x, "x");
  const int kk = int_range(k, "k", 1, kKMeansMaxK, "in 1..256");
  const double r = real_in(rho, "rho");
  const std::size_t n = static_cast<std::size_t>(xa.size());
  const float* rp = nullptr;
  float* rop = nullptr;  // where the new residual goes
  py::array ra;
  if (!residual.is_none()) {
    ra = checked<float>(residual, "residual");
    if (static_cast<std::size_t>(ra.size()) != n) {
      throw py::value_error("residual must have the size of x (" + std::to_string(n) + "), got " +
                            std::to_string(ra.size()));
    }
    if (in_place) {
      if (!ra.writeable()) throw py::value_error("residual must be writable (it is updated in place)");
      rop = static_cast<float*>(ra.mutable_data());
      rp = rop;
    } else {
      rp = ptr<float>(ra);
    }
  }
  const int it = int_range(iters, "iters", 0, INT32_MAX, ">= 0");
  const std::uint64_t sd = seed_in(seed);
  const KMeansMethod m = method_in(method);
  const GccShape s = gcc_shape(n, kk, r);
  const float* xp = ptr<float>(xa);
  py::array_t<float> r_out;
  if (!in_place) {
    r_out = out_array(*residual_out, "residual_out", n, {{xp, 4 * n}, {rp, 4 * n}});
    rop = r_out.mutable_data();
  }
  py::array_t<float> c(static_cast<py::ssize_t>(s.centroids));
  py::array_t<std::uint8_t> mask(static_cast<py::ssize_t>(packed_size(n, 1)));
  py::array_t<std::uint8_t> ids(static_cast<py::ssize_t>(packed_size(s.replaced, s.id_bits)));
  py::array_t<float> exact(static_cast<py::ssize_t>(n - s.replaced));
  float* cp = c.mutable_data();
  std::uint8_t* mp = mask.mutable_data();
  std::uint8_t* ip = ids.mutable_data();
  float* ep = exact.mutable_data();
  {
    py::gil_scoped_release release;
    gcc_encode(xp, n, kk, r, rp, it, sd, m, cp, mp, ip, ep, rop);
  }
  if (in_place) return py::make_tuple(c, mask, ids, exact);
  return py::make_tuple(c, mask, ids, exact, r_out);
}

py::tuple gcc_encode_py(const py::object& x, const py::object& k, const py::object& rho, const py::object& residual,
                        const py::object& iters, const py::object& seed, const py::object& method) {
  return gcc_encode_checked(x, k, rho, residual, iters, seed, method, nullptr);
}

py::tuple gcc_encode_ef_py(const py::object& x, const py::object& k, const py::object& rho,
                           const py::object& residual, const py::object& iters, const py::object& seed,
                           const py::object& method, const py::object& residual_out) {
  return gcc_encode_checked(x, k, rho, residual, iters, seed, method, &residual_out);
}

py::array_t<float> gcc_decode_py(const py::object& centroids, const py::object& mask, const py::object& ids,
                                 const py::object& exact, const py::object& n) {
  py::array ca = checked<float>(centroids, "centroids");
  py::array ma = checked<std::uint8_t>(mask, "mask");
  py::array ia = checked<std::uint8_t>(ids, "ids");
  py::array ea = checked<float>(exact, "exact");
  const std::size_t nn = count_in(n, "n");
  py::array_t<float> out(static_cast<py::ssize_t>(nn));
  const float* cp = ptr<float>(ca);
  const std::uint8_t* mp = ptr<std::uint8_t>(ma);
  const std::uint8_t* ip = ptr<std::uint8_t>(ia);
  const float* ep = ptr<float>(ea);
  const std::size_t kc = static_cast<std::size_t>(ca.size()), ml = static_cast<std::size_t>(ma.size()),
                    il = static_cast<std::size_t>(ia.size()), el = static_cast<std::size_t>(ea.size());
  float* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    gcc_decode(cp, kc, mp, ml, ip, il, ep, el, nn, op);
  }
  return out;
}

}  // namespace

void register_cluster(py::module_& m) {
  m.def("kmeans1d", &kmeans1d_py, py::arg("x"), py::arg("k"), py::arg("method") = "hist", py::arg("iters") = 50,
        py::arg("seed") = 0, "1-D k-means: (centroids ascending, labels, sse). See _core.pyi.");
  m.def("kmeans_centroids", &kmeans_centroids_py, py::arg("x"), py::arg("k"), py::arg("method") = "hist",
        py::arg("iters") = 50, py::arg("seed") = 0, "kmeans1d's centroids alone, without labelling. See _core.pyi.");
  m.def("kmeans_pack", &kmeans_pack_py, py::arg("x"), py::arg("centroids"), py::arg("bits"),
        "kmeans_assign's labels packed at `bits` bits, without the SSE. See _core.pyi.");
  m.def("kmeans_assign", &kmeans_assign_py, py::arg("x"), py::arg("centroids"),
        "Nearest centroid of each value, ties to the lower id: (labels, sse).");
  m.def("laq_quantize", &laq_quantize_py, py::arg("x"), py::arg("d"), py::arg("bits"), py::arg("max_iter") = 100,
        py::arg("tol") = 1e-6, py::arg("alpha") = py::none(), "Loss-aware quantization: (packed codes, alpha, weighted error).");
  m.def("laq_errors", &laq_errors_py, py::arg("x"), py::arg("d"), py::arg("widths"), py::arg("max_iter") = 100,
        py::arg("tol") = 1e-6, "(alphas, errors) laq_quantize reports at each width, sharing one pass.");
  m.def("laq_dequantize", &laq_dequantize_py, py::arg("packed"), py::arg("n"), py::arg("bits"), py::arg("alpha"),
        "x_hat = alpha * level[code], as float32.");
  m.def("gcc_encode", &gcc_encode_py, py::arg("x"), py::arg("k") = 16, py::arg("rho") = 0.5,
        py::arg("residual") = py::none(), py::arg("iters") = 20, py::arg("seed") = 0, py::arg("method") = "hist",
        "GCC centroid compression: (centroids, mask, ids, exact); residual updated in place.");
  m.def("gcc_encode_ef", &gcc_encode_ef_py, py::arg("x"), py::arg("k") = 16, py::arg("rho") = 0.5,
        py::arg("residual") = py::none(), py::arg("iters") = 20, py::arg("seed") = 0, py::arg("method") = "hist",
        py::kw_only(), py::arg("residual_out") = py::none(),
        "gcc_encode with the residual only read: (centroids, mask, ids, exact, new residual).");
  m.def("gcc_decode", &gcc_decode_py, py::arg("centroids"), py::arg("mask"), py::arg("ids"), py::arg("exact"),
        py::arg("n"), "Inverse of gcc_encode.");
}

}  // namespace orbitfl::bindings
