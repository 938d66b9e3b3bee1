// Known-answer tests of the clustering kernels, and digests of their outputs on fixed inputs:
// the digests were recorded on x86-64 and must come out identical on aarch64 (qemu), which is the
// bit-for-bit cross-architecture check of the deterministic kernels.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "bitpack.hpp"
#include "check.hpp"
#include "common.hpp"
#include "gcc.hpp"
#include "kmeans1d.hpp"
#include "laq.hpp"
#include "rng.hpp"

using namespace orbitfl;

namespace {

struct Fnv {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  void bytes(const void* p, std::size_t n) {
    auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ULL;
  }
  template <typename T>
  void vec(const std::vector<T>& v) { bytes(v.data(), v.size() * sizeof(T)); }
  void real(double v) { bytes(&v, sizeof v); }
};

// Fixed inputs from the counter-based generator: a mixture of a few clusters and a heavy tail.
std::vector<float> inputs(std::size_t n, std::uint64_t seed) {
  const std::uint64_t key = rng_key(seed);
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t r = rng_draw(key, i);
    double u = static_cast<double>(r >> 11) * 0x1p-53;
    double centre = static_cast<double>(r & 7) - 3.5;
    x[i] = static_cast<float>(centre * 1e-2 + (u - 0.5) * 4e-3 / (1.0 - 0.9 * u));
  }
  return x;
}

bool check_digest(const char* what, std::uint64_t got, std::uint64_t want) {
  if (got != want) {
    std::printf("  %s digest %016llx, want %016llx\n", what, static_cast<unsigned long long>(got),
                static_cast<unsigned long long>(want));
  }
  return got == want;
}

}  // namespace

TEST_CASE("kmeans: two obvious clusters, every method") {
  const float x[] = {0, 1, 10, 11};
  for (auto m : {KMeansMethod::Optimal, KMeansMethod::Hist, KMeansMethod::Lloyd}) {
    float c[2];
    std::uint8_t l[4];
    double sse = kmeans1d(x, 4, 2, m, 50, 0, c, l);
    CHECK(c[0] == 0.5f && c[1] == 10.5f);
    CHECK(sse == 1.0);
    CHECK(l[0] == 0 && l[1] == 0 && l[2] == 1 && l[3] == 1);
  }
}

TEST_CASE("kmeans optimal: three clusters, sse 4") {
  const float x[] = {12, 1, 50, 2, 11, 3, 10};
  float c[3];
  std::uint8_t l[7];
  double sse = kmeans1d(x, 7, 3, KMeansMethod::Optimal, 0, 0, c, l);
  CHECK(c[0] == 2.0f && c[1] == 11.0f && c[2] == 50.0f);
  CHECK(sse == 4.0);
  CHECK(l[0] == 1 && l[1] == 0 && l[2] == 2);
}

TEST_CASE("kmeans: fewer distinct values than k, empty input") {
  const float x[] = {3, 1, 3};
  float c[3];
  std::uint8_t l[3];
  double sse = kmeans1d(x, 3, 3, KMeansMethod::Hist, 50, 0, c, l);
  CHECK(c[0] == 1.0f && c[1] == 3.0f && c[2] == 3.0f && sse == 0.0);
  CHECK(l[0] == 1 && l[1] == 0 && l[2] == 1);  // ties among equal centroids: the first
  float e[4] = {9, 9, 9, 9};
  CHECK(kmeans1d(nullptr, 0, 4, KMeansMethod::Optimal, 50, 0, e, nullptr) == 0.0);
  CHECK(e[0] == 0.0f && e[3] == 0.0f);
}

TEST_CASE("kmeans_assign: ties to the lower id") {
  const float c[] = {0, 2, 2, 5};
  const float x[] = {1, 3.5f, -1, 9};
  std::uint8_t l[4];
  double sse = kmeans_assign(x, 4, c, 4, l);
  CHECK(l[0] == 0 && l[1] == 1 && l[2] == 0 && l[3] == 3);
  CHECK(sse == 1.0 + 2.25 + 1.0 + 16.0);
}

TEST_CASE("kmeans: bad arguments") {
  const float x[] = {1, 2, NAN};
  float c[4];
  std::uint8_t l[3];
  CHECK_THROWS(kmeans1d(x, 2, 0, KMeansMethod::Hist, 5, 0, c, l), InvalidArgument);
  CHECK_THROWS(kmeans1d(x, 2, 257, KMeansMethod::Hist, 5, 0, c, l), InvalidArgument);
  CHECK_THROWS(kmeans1d(x, 2, 3, KMeansMethod::Hist, 5, 0, c, l), InvalidArgument);
  CHECK_THROWS(kmeans1d(x, 2, 2, KMeansMethod::Hist, -1, 0, c, l), InvalidArgument);
  CHECK_THROWS(kmeans1d(x, 3, 2, KMeansMethod::Optimal, 5, 0, c, l), NonFinite);
  CHECK_THROWS(parse_kmeans_method("median"), InvalidArgument);
  const float unsorted[] = {2, 1};
  CHECK_THROWS(kmeans_assign(x, 2, unsorted, 2, l), InvalidArgument);
  CHECK_THROWS(kmeans_assign(x, 2, unsorted, 0, l), InvalidArgument);
}

TEST_CASE("laq: one bit is the closed form") {
  const float x[] = {1, -3};
  const float d[] = {1, 1};
  std::uint8_t p[1];
  LaqResult r = laq_quantize(x, d, 2, 1, 100, 1e-6, p);
  CHECK(r.alpha == 2.0 && r.error == 2.0 && p[0] == 1);
  const float xw[] = {1, 3};
  const float dw[] = {3, 1};
  r = laq_quantize(xw, dw, 2, 1, 100, 1e-6, p);
  CHECK(r.alpha == 1.5 && r.error == 3.0);
}

TEST_CASE("laq: two bits, levels {-1, 0, 1}") {
  const float x[] = {2, -2, 0.25f};
  const float d[] = {1, 1, 1};
  std::uint8_t p[1];
  LaqResult r = laq_quantize(x, d, 3, 2, 100, 1e-6, p);
  CHECK(r.alpha == 2.0 && r.error == 0.0625 && p[0] == 0x12);
  float out[3];
  laq_dequantize(p, 1, 3, 2, r.alpha, out);
  CHECK(out[0] == 2.0f && out[1] == -2.0f && out[2] == 0.0f);
  const std::uint8_t bad[] = {0x03};  // code 3 does not exist at 2 bits
  CHECK_THROWS(laq_dequantize(bad, 1, 1, 2, 1.0, out), InvalidArgument);
  const float dz[] = {1, 0, 1};
  CHECK_THROWS(laq_quantize(x, dz, 3, 2, 100, 1e-6, p), InvalidArgument);
  CHECK_THROWS(laq_quantize(x, d, 3, 9, 100, 1e-6, p), InvalidArgument);
}

TEST_CASE("laq: laq_errors equals laq_quantize at every width") {
  std::vector<float> x(3001), d(3001);
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)) * std::exp(0.002 * static_cast<double>(i)));
    d[i] = 0.5f + static_cast<float>(i % 7);
  }
  const int widths[] = {1, 2, 3, 5, 8};
  double alphas[5], errors[5];
  laq_errors(x.data(), d.data(), x.size(), widths, 5, 100, 1e-6, alphas, errors);
  std::vector<std::uint8_t> p(x.size());
  for (int w = 0; w < 5; ++w) {
    LaqResult r = laq_quantize(x.data(), d.data(), x.size(), widths[w], 100, 1e-6, p.data());
    CHECK(r.alpha == alphas[w] && r.error == errors[w]);
  }
  const int bad[] = {2, 9};
  CHECK_THROWS(laq_errors(x.data(), d.data(), x.size(), bad, 2, 100, 1e-6, alphas, errors), InvalidArgument);
  d[5] = -1.0f;
  CHECK_THROWS(laq_errors(x.data(), d.data(), x.size(), widths, 0, 100, 1e-6, alphas, errors), InvalidArgument);
}

TEST_CASE("gcc: half of {0, 1, 10, 11} replaced, residual, round trip") {
  const float x[] = {0, 1, 10, 11};
  float res[] = {0, 0, 0, 0};
  GccShape s = gcc_shape(4, 2, 0.5);
  CHECK(s.centroids == 2 && s.replaced == 2 && s.id_bits == 1);
  float c[2], exact[2];
  std::uint8_t mask[1], ids[1];
  gcc_encode(x, 4, 2, 0.5, res, 20, 0, KMeansMethod::Hist, c, mask, ids, exact, res);
  CHECK(c[0] == 0.5f && c[1] == 10.5f);
  CHECK(mask[0] == 0x03 && ids[0] == 0x00);
  CHECK(exact[0] == 10.0f && exact[1] == 11.0f);
  CHECK(res[0] == -0.5f && res[1] == 0.5f && res[2] == 0.0f && res[3] == 0.0f);
  float out[4];
  gcc_decode(c, 2, mask, 1, ids, 1, exact, 2, 4, out);
  CHECK(out[0] == 0.5f && out[1] == 0.5f && out[2] == 10.0f && out[3] == 11.0f);
  CHECK_THROWS(gcc_decode(c, 2, mask, 1, ids, 1, exact, 1, 4, out), InvalidArgument);
  CHECK_THROWS(gcc_decode(c, 2, mask, 0, ids, 1, exact, 2, 4, out), InvalidArgument);
  CHECK_THROWS(gcc_shape(4, 2, 1.5), InvalidArgument);
}

TEST_CASE("digests of fixed inputs (bit-identical across architectures)") {
  Fnv km;
  for (auto m : {KMeansMethod::Optimal, KMeansMethod::Hist, KMeansMethod::Lloyd}) {
    std::vector<float> x = inputs(m == KMeansMethod::Optimal ? 4000 : 100000, 1);
    for (int k : {3, 16, 64}) {
      std::vector<float> c(static_cast<std::size_t>(k));
      std::vector<std::uint8_t> l(x.size());
      double sse = kmeans1d(x.data(), x.size(), k, m, 50, 7, c.data(), l.data());
      km.vec(c);
      km.vec(l);
      km.real(sse);
    }
  }
  Fnv lq;
  {
    std::vector<float> x = inputs(20000, 2), d = inputs(20000, 3);
    for (float& v : d) v = std::fabs(v) + 1e-6f;
    for (int bits = 1; bits <= 8; ++bits) {
      std::vector<std::uint8_t> p(packed_size(x.size(), bits));
      LaqResult r = laq_quantize(x.data(), d.data(), x.size(), bits, 100, 1e-6, p.data());
      lq.vec(p);
      lq.real(r.alpha);
      lq.real(r.error);
    }
  }
  Fnv gc;
  {
    std::vector<float> x = inputs(50000, 4), res = inputs(50000, 5);
    for (float& v : res) v *= 0.1f;
    GccShape s = gcc_shape(x.size(), 16, 0.5);
    std::vector<float> c(s.centroids), exact(x.size() - s.replaced);
    std::vector<std::uint8_t> mask(packed_size(x.size(), 1)), ids(packed_size(s.replaced, s.id_bits));
    // The residual read, the new one written apart: the same outputs, the input left as it was.
    const std::vector<float> res0 = res;
    std::vector<float> out(x.size(), 7.0f), c2(s.centroids), exact2(exact.size());
    std::vector<std::uint8_t> mask2(mask.size()), ids2(ids.size());
    gcc_encode(x.data(), x.size(), 16, 0.5, res.data(), 20, 0, KMeansMethod::Hist, c2.data(), mask2.data(),
               ids2.data(), exact2.data(), out.data());
    CHECK(res == res0);
    gcc_encode(x.data(), x.size(), 16, 0.5, res.data(), 20, 0, KMeansMethod::Hist, c.data(), mask.data(),
               ids.data(), exact.data(), res.data());
    CHECK(c == c2 && mask == mask2 && ids == ids2 && exact == exact2 && std::memcmp(res.data(), out.data(), 4 * out.size()) == 0);
    gc.vec(c);
    gc.vec(mask);
    gc.vec(ids);
    gc.vec(exact);
    gc.vec(res);
  }
  CHECK(check_digest("kmeans1d", km.h, 0x76dcfcd708445673ULL));
  CHECK(check_digest("laq", lq.h, 0x4322809e93d14345ULL));
  CHECK(check_digest("gcc", gc.h, 0x797077ae919966edULL));
}

TEST_MAIN()
