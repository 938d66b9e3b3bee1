// C++ tests of the quantization family. The known-answer hashes below were produced by the NumPy
// reference (orbitfl.kernels.ref_quant) on the same generated inputs, so the SSE2 build on
// x86-64, the NEON build on aarch64 (run under qemu) and a scalar build must all reproduce them.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "bitpack.hpp"
#include "check.hpp"
#include "common.hpp"
#include "halfcast.hpp"
#include "quantize.hpp"
#include "rng.hpp"
#include "sign.hpp"
#include "simd.hpp"
#include "topk.hpp"

using namespace orbitfl;

namespace {

// FNV-1a over raw bytes: outputs are compared bit for bit, little-endian on both targets.
struct Hash {
  std::uint64_t h = 1469598103934665603ULL;
  template <typename T>
  void add(const std::vector<T>& v) {
    const auto* p = reinterpret_cast<const unsigned char*>(v.data());
    for (std::size_t i = 0; i < v.size() * sizeof(T); ++i) {
      h ^= p[i];
      h *= 1099511628211ULL;
    }
  }
};

// x[i] = (u_i - 0.5) * 8 with u_i the generator's float on [0, 1): exact in float32, so NumPy
// builds the same input with rng_u64. Every 7th value is a small integer to create exact ties.
std::vector<float> input(std::size_t n, std::uint64_t seed) {
  std::vector<float> x(n);
  const std::uint64_t key = rng_key(seed);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = (rng_unit_float(rng_draw(key, i)) - 0.5f) * 8.0f;
    if (i % 7 == 0) x[i] = std::floor(x[i]);
  }
  return x;
}

bool check_hash(const char* what, std::uint64_t got, std::uint64_t want) {
  if (got != want) {
    std::printf("  %s: hash 0x%016llx, expected 0x%016llx\n", what, static_cast<unsigned long long>(got),
                static_cast<unsigned long long>(want));
  }
  return got == want;
}

}  // namespace

TEST_CASE("rng draws are the documented splitmix64 values") {
  // splitmix64 seeded with 0 yields 0xE220A8397B1DCDAF first; our stream 0 is exactly that.
  CHECK(rng_draw(rng_key(0), 0) == 0xE220A8397B1DCDAFULL);
  CHECK(rng_draw(rng_key(0), 1) == 0x6E789E6AA1B965F4ULL);
  CHECK(rng_draw(rng_key(1), 0) != rng_draw(rng_key(0), 0));
  CHECK(rng_unit_float(~0ULL) < 1.0f);
}

TEST_CASE("pack/unpack round trip and layout") {
  const std::uint8_t sym[3] = {1, 2, 3};
  std::uint8_t out[1];
  pack_bits(sym, 3, 2, out);
  CHECK(out[0] == 0x39);  // LSB-first: 01 10 11 -> 0b111001
  Hash h;
  for (int bits = 1; bits <= 8; ++bits) {
    for (std::size_t n : {0u, 1u, 7u, 8u, 9u, 31u, 32u, 33u, 63u, 64u, 65u, 1000u, 4099u}) {
      std::vector<std::uint8_t> s(n), back(n);
      const std::uint64_t key = rng_key(static_cast<std::uint64_t>(bits) * 1000 + n);
      for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<std::uint8_t>(rng_draw(key, i) & ((1u << bits) - 1));
      std::vector<std::uint8_t> p(packed_size(n, bits) + 4, 0xAB);
      pack_bits(s.data(), n, bits, p.data());
      CHECK(p[packed_size(n, bits)] == 0xAB);  // no write past the packed size
      unpack_bits(p.data(), packed_size(n, bits), n, bits, back.data());
      CHECK(back == s);
      p.resize(packed_size(n, bits));
      h.add(p);
    }
  }
  CHECK(check_hash("packed", h.h, 0xfcaf5184f6e0ba42ULL));
}

TEST_CASE("pack/unpack reject bad arguments") {
  std::uint8_t s[2] = {4, 0}, out[4];
  CHECK_THROWS(pack_bits(s, 2, 2, out), InvalidArgument);
  CHECK_THROWS(pack_bits(s, 2, 0, out), InvalidArgument);
  CHECK_THROWS(pack_bits(s, 2, 9, out), InvalidArgument);
  CHECK_THROWS(unpack_bits(out, 1, 3, 3, s), InvalidArgument);  // 2 bytes needed
}

TEST_CASE("quantize/dequantize known answers (deterministic and stochastic)") {
  Hash hq, hd;
  for (std::size_t n : {1u, 100u, 10007u}) {
    const std::vector<float> x = input(n, n);
    for (int bits = 1; bits <= 8; ++bits) {
      for (std::size_t bucket : {1u, 100u, 512u}) {
        for (bool stochastic : {false, true}) {
          const std::size_t nb = bucket_count(n, bucket);
          std::vector<std::uint8_t> p(packed_size(n, bits));
          std::vector<float> lo(nb), step(nb), y(n);
          quantize(x.data(), n, bits, bucket, stochastic, 42, p.data(), lo.data(), step.data());
          dequantize(p.data(), p.size(), lo.data(), step.data(), nb, n, bits, bucket, y.data());
          hq.add(p);
          hq.add(lo);
          hq.add(step);
          hd.add(y);
          for (std::size_t i = 0; i < n; ++i) {
            const float s = step[i / bucket];
            const float bound = (stochastic ? s : s / 2) * (1 + 1e-5f) + 1e-6f;
            CHECK(std::fabs(x[i] - y[i]) <= bound);
          }
        }
      }
    }
  }
  CHECK(check_hash("quantize", hq.h, 0x2c09c36fdc4334eeULL));
  CHECK(check_hash("dequantize", hd.h, 0xeda7ee99786a0978ULL));
}

TEST_CASE("quantize rejects NaN/Inf, overflow and bad parameters") {
  std::vector<float> x(40, 1.0f);
  std::vector<std::uint8_t> p(40);
  std::vector<float> lo(40), step(40);
  CHECK_THROWS(quantize(x.data(), 40, 0, 8, false, 0, p.data(), lo.data(), step.data()), InvalidArgument);
  CHECK_THROWS(quantize(x.data(), 40, 9, 8, false, 0, p.data(), lo.data(), step.data()), InvalidArgument);
  CHECK_THROWS(quantize(x.data(), 40, 4, 0, false, 0, p.data(), lo.data(), step.data()), InvalidArgument);
  x[33] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS(quantize(x.data(), 40, 4, 40, false, 0, p.data(), lo.data(), step.data()), NonFinite);
  x[33] = -std::numeric_limits<float>::infinity();
  CHECK_THROWS(quantize(x.data(), 40, 4, 40, false, 0, p.data(), lo.data(), step.data()), NonFinite);
  x[33] = 3e38f;
  x[34] = -3e38f;
  CHECK_THROWS(quantize(x.data(), 40, 4, 40, false, 0, p.data(), lo.data(), step.data()), InvalidArgument);
  float l1[1] = {0.0f}, s1[1] = {-1.0f};
  std::vector<float> y(40);
  CHECK_THROWS(dequantize(p.data(), p.size(), l1, s1, 1, 40, 4, 40, y.data()), InvalidArgument);
  s1[0] = 1.0f;
  CHECK_THROWS(dequantize(p.data(), 19, l1, s1, 1, 40, 4, 40, y.data()), InvalidArgument);  // 20 needed
  CHECK_THROWS(dequantize(p.data(), p.size(), l1, s1, 1, 40, 4, 20, y.data()), InvalidArgument);
}

TEST_CASE("casts known answers and IEEE cases") {
  std::vector<float> x(70000);
  const std::uint64_t key = rng_key(7);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const auto bits = static_cast<std::uint32_t>(rng_draw(key, i));
    std::memcpy(&x[i], &bits, 4);
  }
  std::vector<std::uint16_t> h(x.size()), b(x.size());
  to_float16(x.data(), x.size(), h.data());
  to_bfloat16(x.data(), x.size(), b.data());
  std::vector<std::uint16_t> all(65536);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<std::uint16_t>(i);
  std::vector<float> fh(65536), fb(65536);
  from_float16(all.data(), all.size(), fh.data());
  from_bfloat16(all.data(), all.size(), fb.data());
  Hash hh;
  hh.add(h);
  hh.add(b);
  hh.add(fh);
  hh.add(fb);
  CHECK(check_hash("casts", hh.h, 0x5114f44fddf5f059ULL));
  const float special[5] = {65504.0f, 65520.0f, 5.9604645e-08f, 2.9802322e-08f, -0.0f};
  std::uint16_t out[5];
  to_float16(special, 5, out);
  CHECK(out[0] == 0x7BFF && out[1] == 0x7C00 && out[2] == 0x0001 && out[3] == 0x0000 && out[4] == 0x8000);
}

TEST_CASE("top-k, delta coding and sign known answers") {
  const std::size_t n = 5003;
  std::vector<float> x = input(n, 3), r = input(n, 4);
  std::vector<std::uint32_t> idx(100);
  std::vector<float> vals(100);
  topk(x.data(), r.data(), n, 100, idx.data(), vals.data());
  for (std::size_t j = 1; j < idx.size(); ++j) CHECK(idx[j] > idx[j - 1]);
  std::vector<std::uint8_t> enc(delta_encoded_size(idx.data(), idx.size()));
  delta_encode_indices(idx.data(), idx.size(), enc.data());
  std::vector<std::uint32_t> dec(idx.size());
  delta_decode_indices(enc.data(), enc.size(), idx.size(), dec.data());
  CHECK(dec == idx);
  CHECK_THROWS(delta_decode_indices(enc.data(), enc.size() - 1, idx.size(), dec.data()), InvalidArgument);
  std::vector<std::uint8_t> bits(packed_size(n, 1));
  const float scale = sign_encode(x.data(), r.data(), n, bits.data());
  std::vector<float> sd(n);
  sign_decode(bits.data(), bits.size(), n, scale, sd.data());
  Hash h;
  h.add(idx);
  h.add(vals);
  h.add(enc);
  h.add(bits);
  h.add(r);
  h.add(sd);
  CHECK(check_hash("topk+sign", h.h, 0x21d304059a1c4d86ULL));
  CHECK_THROWS(topk(x.data(), nullptr, n, n + 1, idx.data(), vals.data()), InvalidArgument);
}

TEST_CASE("Golomb-Rice index coding") {
  // gaps 1, 1, 4 -> v = 0, 0, 3; b = 1: [1 0] [1 0] [0 1 1], LSB first
  const std::vector<std::uint32_t> small = {0, 1, 5};
  CHECK(rice_encoded_size(small.data(), 3, 1) == 1);
  std::uint8_t one = 0;
  rice_encode_indices(small.data(), 3, 1, &one);
  CHECK(one == 0x65);
  std::vector<std::uint32_t> back(3);
  rice_decode_indices(&one, 1, 3, 1, back.data());
  CHECK(back == small);
  const std::uint8_t padded = 0xE5;  // a nonzero padding bit
  CHECK_THROWS(rice_decode_indices(&padded, 1, 3, 1, back.data()), InvalidArgument);
  const std::vector<std::uint32_t> ends = {0, 0xFFFFFFFFu};
  const unsigned b = rice_best_param(ends.data(), 2);
  std::vector<std::uint8_t> enc(rice_encoded_size(ends.data(), 2, b));
  rice_encode_indices(ends.data(), 2, b, enc.data());
  std::vector<std::uint32_t> dec(2);
  rice_decode_indices(enc.data(), enc.size(), 2, b, dec.data());
  CHECK(dec == ends);
  CHECK_THROWS(rice_decode_indices(enc.data(), enc.size() - 1, 2, b, dec.data()), InvalidArgument);
  CHECK_THROWS(rice_encoded_size(ends.data(), 2, kRiceMaxParam + 1), InvalidArgument);
  CHECK_THROWS(rice_decode_indices(enc.data(), enc.size(), 2, kRiceMaxParam + 1, dec.data()), InvalidArgument);
  const std::vector<std::uint32_t> down = {3, 2};
  CHECK_THROWS(rice_best_param(down.data(), 2), InvalidArgument);
  // the top-k of a vector: geometric gaps, b near log2(mean gap * ln 2), round trip
  const std::size_t n = 5003;
  std::vector<float> x = input(n, 3);
  std::vector<std::uint32_t> idx(100);
  std::vector<float> vals(100);
  topk(x.data(), nullptr, n, 100, idx.data(), vals.data());
  const unsigned bb = rice_best_param(idx.data(), idx.size());
  CHECK(bb >= 4 && bb <= 7);
  std::vector<std::uint8_t> code(rice_encoded_size(idx.data(), idx.size(), bb));
  rice_encode_indices(idx.data(), idx.size(), bb, code.data());
  std::vector<std::uint32_t> got(idx.size());
  rice_decode_indices(code.data(), code.size(), idx.size(), bb, got.data());
  CHECK(got == idx);
  CHECK(code.size() < delta_encoded_size(idx.data(), idx.size()));
}

int main() {
  std::printf("simd path: %s\n", simd_name());
  return orbitfl_test::run_all();
}
