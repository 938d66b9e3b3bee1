// Bindings of the quantization family: bit packing, uniform quantization, casts, top-k, sign.
// Arguments are validated and outputs allocated under the GIL; kernels run with it released and
// read the caller's arrays in place (no conversion, no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <string>
#include <initializer_list>
#include <utility>

#include "bitpack.hpp"
#include "bindings/checked_array.hpp"
#include "common.hpp"
#include "halfcast.hpp"
#include "quantize.hpp"
#include "sign.hpp"
#include "topk.hpp"

namespace py = pybind11;

namespace orbitfl::bindings {
namespace {


// A residual the kernel updates in place: float32, C-contiguous, writable, same size as x.
float* residual_ptr(py::handle obj, std::size_t n) {
  if (obj.is_none()) return nullptr;
  py::array r = checked<float>(obj, "residual");
  if (static_cast<std::size_t>(r.size()) != n) {
    throw py::value_error("residual must have the size of x (" + std::to_string(n) + "), got " +
                          std::to_string(r.size()));
  }
  if (!r.writeable()) throw py::value_error("residual must be writable (it is updated in place)");
  return static_cast<float*>(r.mutable_data());
}

void check_bits_arg(int bits) {
  if (bits < 1 || bits > 8) throw py::value_error("bits must be in 1..8, got " + std::to_string(bits));
}

std::size_t count_arg(long long v, const char* name) {
  if (v < 0) throw py::value_error(std::string(name) + " must be >= 0, got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

unsigned rice_param_arg(long long b) {
  if (b < 0 || b > static_cast<long long>(kRiceMaxParam)) {
    throw py::value_error("b must be in 0.." + std::to_string(kRiceMaxParam) + ", got " + std::to_string(b));
  }
  return static_cast<unsigned>(b);
}

std::size_t bucket_arg(long long v) {
  if (v < 1) throw py::value_error("bucket must be >= 1, got " + std::to_string(v));
  return static_cast<std::size_t>(v);
}

std::uint64_t seed_arg(py::handle h) {
  PyObject* idx = PyNumber_Index(h.ptr());
  if (!idx) {
    PyErr_Clear();
    throw py::type_error("seed must be an int, got " + type_name(h));
  }
  auto o = py::reinterpret_steal<py::object>(idx);
  unsigned long long v = PyLong_AsUnsignedLongLong(o.ptr());
  if (v == std::numeric_limits<unsigned long long>::max() && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::value_error("seed must be in 0..2**64-1, got " + std::string(py::str(o)));
  }
  return v;
}

// Checked before allocating the output, so a huge n with a short buffer is a ValueError, not an
// attempt to allocate n outputs.
void check_packed_len(std::size_t len, std::size_t n, int bits) {
  if (len < packed_size(n, bits)) {
    throw py::value_error("packed has " + std::to_string(len) + " bytes, " +
                          std::to_string(packed_size(n, bits)) + " needed for n=" + std::to_string(n) +
                          " at " + std::to_string(bits) + " bit" + (bits > 1 ? "s" : ""));
  }
}

template <typename T>
const T* cdata(const py::array& a) {
  return static_cast<const T*>(a.data());
}

template <typename T>
T* wdata(py::array_t<T>& a) {
  return a.mutable_data();
}

// The casts share one shape: a flat array of In in, a flat array of Out of the same length out.
template <typename In, typename Out>
void def_cast(py::module_& m, const char* name, const char* arg,
              void (*cast)(const In*, std::size_t, Out*)) {
  m.def(
      name,
      [cast, arg](py::object obj) {
        py::array a = checked<In>(obj, arg);
        const auto n = static_cast<std::size_t>(a.size());
        py::array_t<Out> out(static_cast<py::ssize_t>(n));
        const In* ip = cdata<In>(a);
        Out* op = wdata(out);
        {
          py::gil_scoped_release release;
          cast(ip, n, op);
        }
        return out;
      },
      py::arg(arg));
}

}  // namespace

void register_quant(py::module_& m) {
  m.def(
      "pack_bits",
      [](py::object symbols, int bits) {
        py::array s = checked<std::uint8_t>(symbols, "symbols");
        check_bits_arg(bits);
        const auto n = static_cast<std::size_t>(s.size());
        py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(packed_size(n, bits)));
        const std::uint8_t* sp = cdata<std::uint8_t>(s);
        std::uint8_t* op = wdata(out);
        {
          py::gil_scoped_release release;
          pack_bits(sp, n, bits, op);
        }
        return out;
      },
      py::arg("symbols"), py::arg("bits"));

  m.def(
      "unpack_bits",
      [](py::object packed, long long n, int bits) {
        py::array p = checked<std::uint8_t>(packed, "packed");
        const std::size_t count = count_arg(n, "n");
        check_bits_arg(bits);
        const auto len = static_cast<std::size_t>(p.size());
        check_packed_len(len, count, bits);
        py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(count));
        const std::uint8_t* pp = cdata<std::uint8_t>(p);
        std::uint8_t* op = wdata(out);
        {
          py::gil_scoped_release release;
          unpack_bits(pp, len, count, bits, op);
        }
        return out;
      },
      py::arg("packed"), py::arg("n"), py::arg("bits"));

  m.def(
      "quantize",
      [](py::object x, int bits, long long bucket, bool stochastic, py::object seed) {
        py::array a = checked<float>(x, "x");
        check_bits_arg(bits);
        const std::size_t bk = bucket_arg(bucket);
        const std::uint64_t s = seed_arg(seed);
        const auto n = static_cast<std::size_t>(a.size());
        const auto nb = static_cast<py::ssize_t>(bucket_count(n, bk));
        py::array_t<std::uint8_t> packed(static_cast<py::ssize_t>(packed_size(n, bits)));
        py::array_t<float> lo(nb), step(nb);
        const float* xp = cdata<float>(a);
        std::uint8_t* pp = wdata(packed);
        float* lp = wdata(lo);
        float* sp = wdata(step);
        {
          py::gil_scoped_release release;
          quantize(xp, n, bits, bk, stochastic, s, pp, lp, sp);
        }
        return py::make_tuple(packed, lo, step);
      },
      py::arg("x"), py::arg("bits"), py::arg("bucket") = 512, py::arg("stochastic") = false,
      py::arg("seed") = 0);

  m.def(
      "dequantize",
      [](py::object packed, py::object lo, py::object step, long long n, int bits, long long bucket) {
        py::array p = checked<std::uint8_t>(packed, "packed");
        py::array l = checked<float>(lo, "lo");
        py::array s = checked<float>(step, "step");
        const std::size_t count = count_arg(n, "n");
        check_bits_arg(bits);
        const std::size_t bk = bucket_arg(bucket);
        const std::size_t nb = bucket_count(count, bk);
        if (static_cast<std::size_t>(l.size()) != nb || static_cast<std::size_t>(s.size()) != nb) {
          throw py::value_error("lo and step must have ceil(n/bucket) = " + std::to_string(nb) +
                                " entries, got " + std::to_string(l.size()) + " and " +
                                std::to_string(s.size()));
        }
        const auto len = static_cast<std::size_t>(p.size());
        check_packed_len(len, count, bits);
        py::array_t<float> out(static_cast<py::ssize_t>(count));
        const std::uint8_t* pp = cdata<std::uint8_t>(p);
        const float* lp = cdata<float>(l);
        const float* sp = cdata<float>(s);
        float* op = wdata(out);
        {
          py::gil_scoped_release release;
          dequantize(pp, len, lp, sp, nb, count, bits, bk, op);
        }
        return out;
      },
      py::arg("packed"), py::arg("lo"), py::arg("step"), py::arg("n"), py::arg("bits"),
      py::arg("bucket") = 512);

  def_cast<float, std::uint16_t>(m, "to_float16", "x", to_float16);
  def_cast<std::uint16_t, float>(m, "from_float16", "h", from_float16);
  def_cast<float, std::uint16_t>(m, "to_bfloat16", "x", to_bfloat16);
  def_cast<std::uint16_t, float>(m, "from_bfloat16", "h", from_bfloat16);
  m.def(
      "topk",
      [](py::object x, long long k, py::object residual) {
        py::array a = checked<float>(x, "x");
        const auto n = static_cast<std::size_t>(a.size());
        if (k < 0 || static_cast<std::size_t>(k) > n) {
          throw py::value_error("k must be in 0..x.size (" + std::to_string(n) + "), got " +
                                std::to_string(k));
        }
        float* rp = residual_ptr(residual, n);
        const auto kk = static_cast<std::size_t>(k);
        py::array_t<std::uint32_t> idx(static_cast<py::ssize_t>(kk));
        py::array_t<float> vals(static_cast<py::ssize_t>(kk));
        const float* xp = cdata<float>(a);
        std::uint32_t* ip = wdata(idx);
        float* vp = wdata(vals);
        {
          py::gil_scoped_release release;
          topk(xp, rp, n, kk, ip, vp);
        }
        return py::make_tuple(idx, vals);
      },
      py::arg("x"), py::arg("k"), py::arg("residual") = py::none());

  m.def(
      "topk_ef",
      [](py::object x, long long k, py::object residual, py::object residual_out) {
        py::array a = checked<float>(x, "x");
        const auto n = static_cast<std::size_t>(a.size());
        const float* rp = nullptr;
        py::array r;
        if (!residual.is_none()) {
          r = checked<float>(residual, "residual");
          if (static_cast<std::size_t>(r.size()) != n) {
            throw py::value_error("residual must have the size of x (" + std::to_string(n) + "), got " +
                                  std::to_string(r.size()));
          }
          rp = cdata<float>(r);
        }
        if (k < 0 || static_cast<std::size_t>(k) > n) {
          throw py::value_error("k must be in 0..x.size (" + std::to_string(n) + "), got " +
                                std::to_string(k));
        }
        const auto kk = static_cast<std::size_t>(k);
        py::array_t<std::uint32_t> idx(static_cast<py::ssize_t>(kk));
        py::array_t<float> vals(static_cast<py::ssize_t>(kk));
        const float* xp = cdata<float>(a);
        py::array_t<float> r_out = out_array(residual_out, "residual_out", n, {{xp, 4 * n}, {rp, 4 * n}});
        std::uint32_t* ip = wdata(idx);
        float* vp = wdata(vals);
        float* rop = wdata(r_out);
        {
          py::gil_scoped_release release;
          topk_into(xp, rp, n, kk, rop, ip, vp);
        }
        return py::make_tuple(idx, vals, r_out);
      },
      py::arg("x"), py::arg("k"), py::arg("residual") = py::none(), py::kw_only(),
      py::arg("residual_out") = py::none());

  m.def(
      "dgc_select",
      [](py::object x, py::object momentum, py::object residual, double mom, long long k, py::object momentum_out,
         py::object residual_out) {
        py::array a = checked<float>(x, "x");
        py::array ua = checked<float>(momentum, "momentum");
        py::array va = checked<float>(residual, "residual");
        const auto n = static_cast<std::size_t>(a.size());
        for (auto [arr, name] : {std::pair{&ua, "momentum"}, std::pair{&va, "residual"}}) {
          if (static_cast<std::size_t>(arr->size()) != n) {
            throw py::value_error(std::string(name) + " must have the size of x (" + std::to_string(n) +
                                  "), got " + std::to_string(arr->size()));
          }
        }
        if (!(mom >= 0.0 && mom < 1.0)) throw py::value_error("m must be in [0, 1), got " + std::to_string(mom));
        if (k < 0 || static_cast<std::size_t>(k) > n) {
          throw py::value_error("k must be in 0..x.size (" + std::to_string(n) + "), got " +
                                std::to_string(k));
        }
        const auto kk = static_cast<std::size_t>(k);
        py::array_t<std::uint32_t> idx(static_cast<py::ssize_t>(kk));
        py::array_t<float> vals(static_cast<py::ssize_t>(kk));
        const float* xp = cdata<float>(a);
        const float* up = cdata<float>(ua);
        const float* vp = cdata<float>(va);
        py::array_t<float> u_out =
            out_array(momentum_out, "momentum_out", n, {{xp, 4 * n}, {up, 4 * n}, {vp, 4 * n}});
        py::array_t<float> v_out = out_array(residual_out, "residual_out", n,
                                             {{xp, 4 * n}, {up, 4 * n}, {vp, 4 * n}, {u_out.data(), 4 * n}});
        std::uint32_t* ip = wdata(idx);
        float* valp = wdata(vals);
        float* uo = wdata(u_out);
        float* vo = wdata(v_out);
        const auto mf = static_cast<float>(mom);
        {
          py::gil_scoped_release release;
          dgc_select(xp, up, vp, n, mf, kk, uo, vo, ip, valp);
        }
        return py::make_tuple(idx, vals, u_out, v_out);
      },
      py::arg("x"), py::arg("momentum"), py::arg("residual"), py::arg("m"), py::arg("k"), py::kw_only(),
      py::arg("momentum_out") = py::none(), py::arg("residual_out") = py::none());

  m.def(
      "scatter_sub",
      [](py::object out, py::object indices, py::object a, py::object b) {
        py::array o = checked<float>(out, "out");
        if (!o.writeable()) throw py::value_error("out must be writable (it is updated in place)");
        py::array ia = checked<std::uint32_t>(indices, "indices");
        py::array aa = checked<float>(a, "a");
        py::array ba = checked<float>(b, "b");
        const auto k = static_cast<std::size_t>(ia.size());
        for (auto [arr, name] : {std::pair{&aa, "a"}, std::pair{&ba, "b"}}) {
          if (static_cast<std::size_t>(arr->size()) != k) {
            throw py::value_error(std::string(name) + " must have the size of indices (" + std::to_string(k) +
                                  "), got " + std::to_string(arr->size()));
          }
        }
        const auto n = static_cast<std::size_t>(o.size());
        float* op = static_cast<float*>(o.mutable_data());
        const std::uint32_t* ip = cdata<std::uint32_t>(ia);
        const float* ap = cdata<float>(aa);
        const float* bp = cdata<float>(ba);
        {
          py::gil_scoped_release release;
          scatter_sub(op, n, ip, ap, bp, k);
        }
      },
      py::arg("out"), py::arg("indices"), py::arg("a"), py::arg("b"));

  m.def(
      "delta_encode_indices",
      [](py::object indices) {
        py::array a = checked<std::uint32_t>(indices, "indices");
        const auto k = static_cast<std::size_t>(a.size());
        const std::uint32_t* ip = cdata<std::uint32_t>(a);
        std::size_t size;
        {
          py::gil_scoped_release release;
          size = delta_encoded_size(ip, k);
        }
        py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(size));
        std::uint8_t* op = wdata(out);
        {
          py::gil_scoped_release release;
          delta_encode_indices(ip, k, op);
        }
        return out;
      },
      py::arg("indices"));

  m.def(
      "delta_decode_indices",
      [](py::object buf, long long k) {
        py::array b = checked<std::uint8_t>(buf, "buf");
        const std::size_t kk = count_arg(k, "k");
        // Each index takes at least one byte: a k beyond the buffer is truncation, caught before
        // allocating k outputs.
        const auto len = static_cast<std::size_t>(b.size());
        if (kk > len) {
          throw py::value_error("buf is truncated: " + std::to_string(len) + " bytes cannot hold " +
                                std::to_string(kk) + " varints");
        }
        py::array_t<std::uint32_t> out(static_cast<py::ssize_t>(kk));
        const std::uint8_t* bp = cdata<std::uint8_t>(b);
        std::uint32_t* op = wdata(out);
        {
          py::gil_scoped_release release;
          delta_decode_indices(bp, len, kk, op);
        }
        return out;
      },
      py::arg("buf"), py::arg("k"));

  m.def(
      "rice_best_param",
      [](py::object indices) {
        py::array a = checked<std::uint32_t>(indices, "indices");
        const auto k = static_cast<std::size_t>(a.size());
        const std::uint32_t* ip = cdata<std::uint32_t>(a);
        unsigned b;
        {
          py::gil_scoped_release release;
          b = rice_best_param(ip, k);
        }
        return static_cast<int>(b);
      },
      py::arg("indices"));

  m.def(
      "rice_encode_indices",
      [](py::object indices, long long b) {
        py::array a = checked<std::uint32_t>(indices, "indices");
        const unsigned bb = rice_param_arg(b);
        const auto k = static_cast<std::size_t>(a.size());
        const std::uint32_t* ip = cdata<std::uint32_t>(a);
        std::size_t size;
        {
          py::gil_scoped_release release;
          size = rice_encoded_size(ip, k, bb);
        }
        py::array_t<std::uint8_t> out(static_cast<py::ssize_t>(size));
        std::uint8_t* op = wdata(out);
        {
          py::gil_scoped_release release;
          rice_encode_indices(ip, k, bb, op);
        }
        return out;
      },
      py::arg("indices"), py::arg("b"));

  m.def(
      "rice_decode_indices",
      [](py::object buf, long long k, long long b) {
        py::array a = checked<std::uint8_t>(buf, "buf");
        const std::size_t kk = count_arg(k, "k");
        const unsigned bb = rice_param_arg(b);
        // Each code takes at least b + 1 bits: a k beyond that is truncation, caught before
        // allocating k outputs.
        const auto len = static_cast<std::size_t>(a.size());
        if (kk > len * 8 / (bb + 1)) {
          throw py::value_error("buf is truncated: " + std::to_string(len) + " bytes cannot hold " +
                                std::to_string(kk) + " codes of at least " + std::to_string(bb + 1) +
                                " bits");
        }
        py::array_t<std::uint32_t> out(static_cast<py::ssize_t>(kk));
        const std::uint8_t* bp = cdata<std::uint8_t>(a);
        std::uint32_t* op = wdata(out);
        {
          py::gil_scoped_release release;
          rice_decode_indices(bp, len, kk, bb, op);
        }
        return out;
      },
      py::arg("buf"), py::arg("k"), py::arg("b"));

  m.def(
      "sign_encode",
      [](py::object x, py::object residual) {
        py::array a = checked<float>(x, "x");
        const auto n = static_cast<std::size_t>(a.size());
        float* rp = residual_ptr(residual, n);
        py::array_t<std::uint8_t> packed(static_cast<py::ssize_t>(packed_size(n, 1)));
        const float* xp = cdata<float>(a);
        std::uint8_t* pp = wdata(packed);
        float scale;
        {
          py::gil_scoped_release release;
          scale = sign_encode(xp, rp, n, pp);
        }
        return py::make_tuple(packed, static_cast<double>(scale));
      },
      py::arg("x"), py::arg("residual") = py::none());

  m.def(
      "sign_decode",
      [](py::object packed, long long n, double scale) {
        py::array p = checked<std::uint8_t>(packed, "packed");
        const std::size_t count = count_arg(n, "n");
        const auto s32 = static_cast<float>(scale);
        const auto len = static_cast<std::size_t>(p.size());
        check_packed_len(len, count, 1);
        py::array_t<float> out(static_cast<py::ssize_t>(count));
        const std::uint8_t* pp = cdata<std::uint8_t>(p);
        float* op = wdata(out);
        {
          py::gil_scoped_release release;
          sign_decode(pp, len, count, s32, op);
        }
        return out;
      },
      py::arg("packed"), py::arg("n"), py::arg("scale"));
}

}  // namespace orbitfl::bindings
