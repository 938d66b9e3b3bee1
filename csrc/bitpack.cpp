#include "bitpack.hpp"

#include <cstring>
#include <string>

#include "common.hpp"
#include "simd.hpp"

namespace orbitfl {
namespace {

// Eight symbols of B bits are exactly B bytes: the unit every path below works in.
template <int B>
inline void pack8(const std::uint8_t* s, std::uint8_t* o) {
  std::uint64_t acc = 0;
  for (int k = 0; k < 8; ++k) acc |= static_cast<std::uint64_t>(s[k]) << (k * B);
  for (int b = 0; b < B; ++b) o[b] = static_cast<std::uint8_t>(acc >> (8 * b));
}

template <int B>
inline void unpack8(const std::uint8_t* in, std::uint8_t* s) {
  std::uint64_t acc = 0;
  for (int b = 0; b < B; ++b) acc |= static_cast<std::uint64_t>(in[b]) << (8 * b);
  constexpr std::uint64_t mask = (1u << B) - 1;
  for (int k = 0; k < 8; ++k) s[k] = static_cast<std::uint8_t>((acc >> (k * B)) & mask);
}

// Packs whole groups of 32 symbols with vector instructions; returns how many symbols it did.
template <int B>
std::size_t pack_simd(const std::uint8_t* s, std::size_t n, std::uint8_t* out) {
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  if constexpr (B == 4 || B == 2) {
    const __m128i lo8 = _mm_set1_epi16(0x00FF);
    const __m128i hi4 = _mm_set1_epi16(0x00F0);
    for (; i + 32 <= n; i += 32) {
      __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
      if constexpr (B == 4) {
        // In each 16-bit lane (a | b << 8) becomes (a | b << 4).
        __m128i p0 = _mm_or_si128(_mm_and_si128(v0, lo8), _mm_and_si128(_mm_srli_epi16(v0, 4), hi4));
        __m128i p1 = _mm_or_si128(_mm_and_si128(v1, lo8), _mm_and_si128(_mm_srli_epi16(v1, 4), hi4));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i / 2), _mm_packus_epi16(p0, p1));
      } else {
        const __m128i hi2 = _mm_set1_epi16(0x000C);
        __m128i p0 = _mm_or_si128(_mm_and_si128(v0, lo8), _mm_and_si128(_mm_srli_epi16(v0, 6), hi2));
        __m128i p1 = _mm_or_si128(_mm_and_si128(v1, lo8), _mm_and_si128(_mm_srli_epi16(v1, 6), hi2));
        __m128i u = _mm_packus_epi16(p0, p1);  // 16 bytes of 4-bit pairs
        __m128i w = _mm_or_si128(_mm_and_si128(u, lo8), _mm_and_si128(_mm_srli_epi16(u, 4), hi4));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + i / 4), _mm_packus_epi16(w, w));
      }
    }
  } else if constexpr (B == 1) {
    for (; i + 32 <= n; i += 32) {
      __m128i v0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      __m128i v1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
      // Bit 0 of each byte moves to bit 7, where movemask collects it.
      auto m0 = static_cast<std::uint32_t>(_mm_movemask_epi8(_mm_slli_epi64(v0, 7)));
      auto m1 = static_cast<std::uint32_t>(_mm_movemask_epi8(_mm_slli_epi64(v1, 7)));
      std::uint32_t m = m0 | (m1 << 16);
      for (int b = 0; b < 4; ++b) out[i / 8 + b] = static_cast<std::uint8_t>(m >> (8 * b));
    }
  }
#elif defined(ORBITFL_NEON)
  if constexpr (B == 4) {
    for (; i + 32 <= n; i += 32) {
      uint8x16x2_t v = vld2q_u8(s + i);  // even symbols, odd symbols
      vst1q_u8(out + i / 2, vorrq_u8(v.val[0], vshlq_n_u8(v.val[1], 4)));
    }
  } else if constexpr (B == 2) {
    for (; i + 64 <= n; i += 64) {
      uint8x16x4_t v = vld4q_u8(s + i);
      uint8x16_t r = vorrq_u8(vorrq_u8(v.val[0], vshlq_n_u8(v.val[1], 2)),
                              vorrq_u8(vshlq_n_u8(v.val[2], 4), vshlq_n_u8(v.val[3], 6)));
      vst1q_u8(out + i / 4, r);
    }
  } else if constexpr (B == 1) {
    const int8_t shifts_arr[16] = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7};
    const int8x16_t shifts = vld1q_s8(shifts_arr);
    for (; i + 16 <= n; i += 16) {
      uint8x16_t v = vshlq_u8(vld1q_u8(s + i), shifts);
      // Distinct bits: pairwise sums are ORs; three widenings leave one byte per 8 symbols.
      uint64x2_t w = vpaddlq_u32(vpaddlq_u16(vpaddlq_u8(v)));
      out[i / 8] = static_cast<std::uint8_t>(vgetq_lane_u64(w, 0));
      out[i / 8 + 1] = static_cast<std::uint8_t>(vgetq_lane_u64(w, 1));
    }
  }
#else
  (void)s;
  (void)n;
  (void)out;
#endif
  return i;
}

template <int B>
std::size_t unpack_simd(const std::uint8_t* p, std::size_t n, std::uint8_t* s) {
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  if constexpr (B == 4) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    for (; i + 32 <= n; i += 32) {
      __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i / 2));
      __m128i lo = _mm_and_si128(v, m4);
      __m128i hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(s + i), _mm_unpacklo_epi8(lo, hi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(s + i + 16), _mm_unpackhi_epi8(lo, hi));
    }
  } else if constexpr (B == 2) {
    const __m128i m4 = _mm_set1_epi8(0x0F);
    const __m128i m2 = _mm_set1_epi8(0x03);
    for (; i + 32 <= n; i += 32) {
      __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i / 4));
      __m128i u = _mm_unpacklo_epi8(_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
      __m128i lo = _mm_and_si128(u, m2);
      __m128i hi = _mm_and_si128(_mm_srli_epi16(u, 2), m2);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(s + i), _mm_unpacklo_epi8(lo, hi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(s + i + 16), _mm_unpackhi_epi8(lo, hi));
    }
  } else if constexpr (B == 1) {
    const __m128i bitsel = _mm_set_epi8(-128, 64, 32, 16, 8, 4, 2, 1, -128, 64, 32, 16, 8, 4, 2, 1);
    const __m128i one = _mm_set1_epi8(1);
    for (; i + 16 <= n; i += 16) {
      int w = p[i / 8] | (p[i / 8 + 1] << 8);
      __m128i v = _mm_cvtsi32_si128(w);
      v = _mm_unpacklo_epi8(v, v);
      v = _mm_unpacklo_epi16(v, v);
      v = _mm_unpacklo_epi32(v, v);  // byte k = packed byte k / 8
      v = _mm_cmpeq_epi8(_mm_and_si128(v, bitsel), bitsel);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(s + i), _mm_and_si128(v, one));
    }
  }
#elif defined(ORBITFL_NEON)
  if constexpr (B == 4) {
    for (; i + 32 <= n; i += 32) {
      uint8x16_t v = vld1q_u8(p + i / 2);
      uint8x16x2_t r;
      r.val[0] = vandq_u8(v, vdupq_n_u8(0x0F));
      r.val[1] = vshrq_n_u8(v, 4);
      vst2q_u8(s + i, r);
    }
  } else if constexpr (B == 2) {
    for (; i + 64 <= n; i += 64) {
      uint8x16_t v = vld1q_u8(p + i / 4);
      const uint8x16_t m2 = vdupq_n_u8(0x03);
      uint8x16x4_t r;
      r.val[0] = vandq_u8(v, m2);
      r.val[1] = vandq_u8(vshrq_n_u8(v, 2), m2);
      r.val[2] = vandq_u8(vshrq_n_u8(v, 4), m2);
      r.val[3] = vshrq_n_u8(v, 6);
      vst4q_u8(s + i, r);
    }
  } else if constexpr (B == 1) {
    const uint8_t sel_arr[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bitsel = vld1q_u8(sel_arr);
    for (; i + 16 <= n; i += 16) {
      uint8x16_t v = vcombine_u8(vdup_n_u8(p[i / 8]), vdup_n_u8(p[i / 8 + 1]));
      vst1q_u8(s + i, vandq_u8(vtstq_u8(v, bitsel), vdupq_n_u8(1)));
    }
  }
#else
  (void)p;
  (void)n;
  (void)s;
#endif
  return i;
}

template <int B>
void pack_t(const std::uint8_t* s, std::size_t n, std::uint8_t* out) {
  if constexpr (B == 8) {
    if (n) std::memcpy(out, s, n);
    return;
  }
  std::size_t i = pack_simd<B>(s, n, out);  // i is a multiple of 8
  for (; i + 8 <= n; i += 8) pack8<B>(s + i, out + i / 8 * B);
  if (i < n) {
    std::uint8_t sym[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::uint8_t bytes[8];
    std::memcpy(sym, s + i, n - i);
    pack8<B>(sym, bytes);
    std::memcpy(out + i / 8 * B, bytes, packed_size(n - i, B));
  }
}

template <int B>
void unpack_t(const std::uint8_t* p, std::size_t n, std::uint8_t* s) {
  if constexpr (B == 8) {
    if (n) std::memcpy(s, p, n);
    return;
  }
  std::size_t i = unpack_simd<B>(p, n, s);
  for (; i + 8 <= n; i += 8) unpack8<B>(p + i / 8 * B, s + i);
  if (i < n) {
    std::uint8_t bytes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::uint8_t sym[8];
    std::memcpy(bytes, p + i / 8 * B, packed_size(n - i, B));
    unpack8<B>(bytes, sym);
    std::memcpy(s + i, sym, n - i);
  }
}

}  // namespace

void check_bits(int bits) {
  require(bits >= 1 && bits <= 8, "bits must be in 1..8, got " + std::to_string(bits));
}

void pack_bits_unchecked(const std::uint8_t* symbols, std::size_t n, int bits, std::uint8_t* out) {
  switch (bits) {
    case 1: return pack_t<1>(symbols, n, out);
    case 2: return pack_t<2>(symbols, n, out);
    case 3: return pack_t<3>(symbols, n, out);
    case 4: return pack_t<4>(symbols, n, out);
    case 5: return pack_t<5>(symbols, n, out);
    case 6: return pack_t<6>(symbols, n, out);
    case 7: return pack_t<7>(symbols, n, out);
    default: return pack_t<8>(symbols, n, out);
  }
}

void unpack_bits_unchecked(const std::uint8_t* packed, std::size_t n, int bits, std::uint8_t* out) {
  switch (bits) {
    case 1: return unpack_t<1>(packed, n, out);
    case 2: return unpack_t<2>(packed, n, out);
    case 3: return unpack_t<3>(packed, n, out);
    case 4: return unpack_t<4>(packed, n, out);
    case 5: return unpack_t<5>(packed, n, out);
    case 6: return unpack_t<6>(packed, n, out);
    case 7: return unpack_t<7>(packed, n, out);
    default: return unpack_t<8>(packed, n, out);
  }
}

void pack_bits(const std::uint8_t* symbols, std::size_t n, int bits, std::uint8_t* out) {
  check_bits(bits);
  if (bits < 8) {
    std::uint8_t any = 0;
    for (std::size_t i = 0; i < n; ++i) any |= symbols[i];
    if (any >> bits) {
      std::uint8_t mx = 0;
      for (std::size_t i = 0; i < n; ++i) mx = symbols[i] > mx ? symbols[i] : mx;
      throw InvalidArgument("symbols must be < 2**bits = " + std::to_string(1 << bits) + ", got " +
                            std::to_string(mx));
    }
  }
  pack_bits_unchecked(symbols, n, bits, out);
}

void unpack_bits(const std::uint8_t* packed, std::size_t packed_len, std::size_t n, int bits,
                 std::uint8_t* out) {
  check_bits(bits);
  std::size_t need = packed_size(n, bits);
  require(packed_len >= need, "packed has " + std::to_string(packed_len) + " bytes, " +
                                  std::to_string(need) + " needed for n=" + std::to_string(n) +
                                  " at " + std::to_string(bits) + " bits");
  unpack_bits_unchecked(packed, n, bits, out);
}

}  // namespace orbitfl
