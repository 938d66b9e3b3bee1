// Counter-based random numbers: draw i of stream `seed` is a pure function of (seed, i), so any
// element can be drawn independently, in any order, by C++ or by NumPy's uint64 arithmetic
// (orbitfl.kernels.ref_quant.rng_u64 computes the same numbers).
#pragma once

#include <cstdint>

namespace orbitfl {

// The splitmix64 output function: a bijective avalanche mix of 64 bits.
inline std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Mixing the seed first keeps streams of neighbouring seeds from being shifted copies.
inline std::uint64_t rng_key(std::uint64_t seed) { return mix64(seed); }

// Draw `index` of the stream with key `key`: splitmix64 evaluated at a Weyl-sequence position.
inline std::uint64_t rng_draw(std::uint64_t key, std::uint64_t index) {
  return mix64(key + (index + 1) * 0x9E3779B97F4A7C15ULL);
}

// A float32 uniform on [0, 1) with 24 random bits: exact, so C++ and NumPy agree.
inline float rng_unit_float(std::uint64_t draw) {
  return static_cast<float>(draw >> 40) * 0x1p-24f;
}

}  // namespace orbitfl
