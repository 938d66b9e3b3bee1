#include "halfcast.hpp"

#include <cstring>

namespace orbitfl {
namespace {

inline std::uint32_t bits_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float float_of(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::uint16_t half_of(std::uint32_t f) {
  const std::uint32_t sign = (f >> 16) & 0x8000u;
  const std::uint32_t a = f & 0x7FFFFFFFu;
  std::uint32_t h;
  if (a > 0x7F800000u) {
    h = 0x7E00u | ((a >> 13) & 0x3FFu);  // quiet NaN, top payload bits kept
  } else if (a >= 0x477FF000u) {
    h = 0x7C00u;  // Inf, or rounds to >= 65520: overflow
  } else if (a < 0x38800000u) {
    // Below 2**-14 the half is subnormal: |x| * 2**24 rounded to an integer. Adding 0.5 puts the
    // binary point of [0.5, 1) at 2**-24, so the FPU does the round-to-nearest-even exactly.
    h = bits_of(float_of(a) + 0.5f) - 0x3F000000u;
  } else {
    // Rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even;
    // a carry into the exponent is the correct result.
    h = (a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  }
  return static_cast<std::uint16_t>(h | sign);
}

inline std::uint32_t float_bits_of_half(std::uint16_t hv) {
  const std::uint32_t h = hv;
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1F) return sign | (m ? 0x7FC00000u | (m << 13) : 0x7F800000u);
  if (e == 0) return sign | bits_of(static_cast<float>(m) * 0x1p-24f);  // exact
  return sign | ((e + 112u) << 23) | (m << 13);
}

}  // namespace

void to_float16(const float* x, std::size_t n, std::uint16_t* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = half_of(bits_of(x[i]));
}

void from_float16(const std::uint16_t* h, std::size_t n, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = float_of(float_bits_of_half(h[i]));
}

void to_bfloat16(const float* x, std::size_t n, std::uint16_t* out) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t f = bits_of(x[i]);
    std::uint32_t r;
    if ((f & 0x7FFFFFFFu) > 0x7F800000u) {
      r = (f >> 16) | 0x0040u;  // keep it a NaN even if the payload was in the dropped bits
    } else {
      r = (f + 0x7FFFu + ((f >> 16) & 1u)) >> 16;  // nearest even; FLT_MAX rounds to Inf
    }
    out[i] = static_cast<std::uint16_t>(r);
  }
}

void from_bfloat16(const std::uint16_t* h, std::size_t n, float* out) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t f = static_cast<std::uint32_t>(h[i]) << 16;
    if ((f & 0x7FFFFFFFu) > 0x7F800000u) f |= 0x00400000u;
    out[i] = float_of(f);
  }
}

}  // namespace orbitfl
