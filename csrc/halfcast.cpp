#include "halfcast.hpp"

#include <cstring>

#include "simd.hpp"

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

// Every case is computed and the right one selected, without branches, so the compiler can
// vectorise the loops (the branchy form ran at a third of the speed).
inline std::uint16_t half_of(std::uint32_t f) {
  const std::uint32_t sign = (f >> 16) & 0x8000u;
  const std::uint32_t a = f & 0x7FFFFFFFu;
  // Rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits to nearest even;
  // a carry into the exponent is the correct result.
  const std::uint32_t normal = (a - (112u << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  // Below 2**-14 the half is subnormal: |x| * 2**24 rounded to an integer. Adding 0.5 puts the
  // binary point of [0.5, 1) at 2**-24, so the FPU does the round-to-nearest-even exactly.
  const std::uint32_t sub = bits_of(float_of(a) + 0.5f) - 0x3F000000u;
  const std::uint32_t nan = 0x7E00u | ((a >> 13) & 0x3FFu);  // quiet, top payload bits kept
  std::uint32_t h = a < 0x38800000u ? sub : normal;
  h = a >= 0x477FF000u ? 0x7C00u : h;  // Inf, or rounds to >= 65520: overflow
  h = a > 0x7F800000u ? nan : h;
  return static_cast<std::uint16_t>(h | sign);
}

inline std::uint32_t float_bits_of_half(std::uint16_t hv) {
  const std::uint32_t h = hv;
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t e = h & 0x7C00u, m = h & 0x3FFu;
  const std::uint32_t normal = ((h & 0x7FFFu) << 13) + (112u << 23);
  const std::uint32_t sub = bits_of(static_cast<float>(m) * 0x1p-24f);  // exact
  const std::uint32_t special = 0x7F800000u | (m << 13) | (m ? 0x00400000u : 0u);  // Inf, quiet NaN
  std::uint32_t r = e == 0 ? sub : normal;
  r = e == 0x7C00u ? special : r;
  return sign | r;
}

}  // namespace

void to_float16(const float* x, std::size_t n, std::uint16_t* out) {
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  // The scalar half_of, four lanes at a time. a has its sign bit clear, so signed compares work.
  const __m128i abs_mask = _mm_set1_epi32(0x7FFFFFFF), one = _mm_set1_epi32(1);
  const __m128i rebias = _mm_set1_epi32(static_cast<int>((112u << 23) - 0xFFFu));
  const __m128 half = _mm_set1_ps(0.5f);
  const __m128i half_bits = _mm_set1_epi32(0x3F000000), sub_limit = _mm_set1_epi32(0x38800000);
  const __m128i big_limit = _mm_set1_epi32(0x477FEFFF), inf_bits = _mm_set1_epi32(0x7F800000);
  const __m128i h_inf = _mm_set1_epi32(0x7C00), h_qnan = _mm_set1_epi32(0x7E00);
  const __m128i m10 = _mm_set1_epi32(0x3FF), sign16 = _mm_set1_epi32(0x8000);
  auto sel = [](__m128i m, __m128i a, __m128i b) { return _mm_or_si128(_mm_and_si128(m, a), _mm_andnot_si128(m, b)); };
  auto four = [&](const float* p) {
    const __m128i f = _mm_castps_si128(_mm_loadu_ps(p));
    const __m128i sign = _mm_and_si128(_mm_srli_epi32(f, 16), sign16);
    const __m128i a = _mm_and_si128(f, abs_mask);
    const __m128i normal = _mm_srli_epi32(
        _mm_add_epi32(_mm_sub_epi32(a, rebias), _mm_and_si128(_mm_srli_epi32(a, 13), one)), 13);
    const __m128i sub = _mm_sub_epi32(_mm_castps_si128(_mm_add_ps(_mm_castsi128_ps(a), half)), half_bits);
    const __m128i nan = _mm_or_si128(h_qnan, _mm_and_si128(_mm_srli_epi32(a, 13), m10));
    __m128i h = sel(_mm_cmplt_epi32(a, sub_limit), sub, normal);
    h = sel(_mm_cmpgt_epi32(a, big_limit), h_inf, h);
    h = sel(_mm_cmpgt_epi32(a, inf_bits), nan, h);
    // Bias into int16 range for the signed saturating pack, then back.
    return _mm_sub_epi32(_mm_or_si128(h, sign), sign16);
  };
  for (; i + 8 <= n; i += 8) {
    const __m128i packed = _mm_packs_epi32(four(x + i), four(x + i + 4));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm_xor_si128(packed, _mm_set1_epi16(-32768)));
  }
#elif defined(ORBITFL_NEON)
  const uint32x4_t abs_mask = vdupq_n_u32(0x7FFFFFFFu), one = vdupq_n_u32(1);
  const uint32x4_t rebias = vdupq_n_u32((112u << 23) - 0xFFFu);
  const float32x4_t half = vdupq_n_f32(0.5f);
  for (; i + 8 <= n; i += 8) {
    uint16x4_t r[2];
    for (int k = 0; k < 2; ++k) {
      const uint32x4_t f = vreinterpretq_u32_f32(vld1q_f32(x + i + 4 * k));
      const uint32x4_t sign = vandq_u32(vshrq_n_u32(f, 16), vdupq_n_u32(0x8000));
      const uint32x4_t a = vandq_u32(f, abs_mask);
      const uint32x4_t normal =
          vshrq_n_u32(vaddq_u32(vsubq_u32(a, rebias), vandq_u32(vshrq_n_u32(a, 13), one)), 13);
      const uint32x4_t sub =
          vsubq_u32(vreinterpretq_u32_f32(vaddq_f32(vreinterpretq_f32_u32(a), half)), vdupq_n_u32(0x3F000000u));
      const uint32x4_t nan = vorrq_u32(vdupq_n_u32(0x7E00), vandq_u32(vshrq_n_u32(a, 13), vdupq_n_u32(0x3FF)));
      uint32x4_t h = vbslq_u32(vcltq_u32(a, vdupq_n_u32(0x38800000u)), sub, normal);
      h = vbslq_u32(vcgtq_u32(a, vdupq_n_u32(0x477FEFFFu)), vdupq_n_u32(0x7C00), h);
      h = vbslq_u32(vcgtq_u32(a, vdupq_n_u32(0x7F800000u)), nan, h);
      r[k] = vmovn_u32(vorrq_u32(h, sign));
    }
    vst1q_u16(out + i, vcombine_u16(r[0], r[1]));
  }
#endif
  for (; i < n; ++i) out[i] = half_of(bits_of(x[i]));
}

void from_float16(const std::uint16_t* h, std::size_t n, float* out) {
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  const __m128i zero = _mm_setzero_si128(), e_mask = _mm_set1_epi32(0x7C00), m10 = _mm_set1_epi32(0x3FF);
  const __m128i abs15 = _mm_set1_epi32(0x7FFF), rebias = _mm_set1_epi32(112 << 23);
  const __m128i inf_bits = _mm_set1_epi32(0x7F800000), quiet = _mm_set1_epi32(0x00400000);
  const __m128 unit = _mm_set1_ps(0x1p-24f);
  auto sel = [](__m128i m, __m128i a, __m128i b) { return _mm_or_si128(_mm_and_si128(m, a), _mm_andnot_si128(m, b)); };
  auto four = [&](__m128i v) {
    const __m128i sign = _mm_slli_epi32(_mm_andnot_si128(abs15, v), 16);
    const __m128i e = _mm_and_si128(v, e_mask), m = _mm_and_si128(v, m10);
    const __m128i normal = _mm_add_epi32(_mm_slli_epi32(_mm_and_si128(v, abs15), 13), rebias);
    const __m128i sub = _mm_castps_si128(_mm_mul_ps(_mm_cvtepi32_ps(m), unit));
    const __m128i special = _mm_or_si128(_mm_or_si128(inf_bits, _mm_slli_epi32(m, 13)),
                                         _mm_andnot_si128(_mm_cmpeq_epi32(m, zero), quiet));
    __m128i r = sel(_mm_cmpeq_epi32(e, zero), sub, normal);
    r = sel(_mm_cmpeq_epi32(e, e_mask), special, r);
    return _mm_castsi128_ps(_mm_or_si128(r, sign));
  };
  for (; i + 8 <= n; i += 8) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
    _mm_storeu_ps(out + i, four(_mm_unpacklo_epi16(v, zero)));
    _mm_storeu_ps(out + i + 4, four(_mm_unpackhi_epi16(v, zero)));
  }
#elif defined(ORBITFL_NEON)
  for (; i + 4 <= n; i += 4) {
    const uint32x4_t v = vmovl_u16(vld1_u16(h + i));
    const uint32x4_t sign = vshlq_n_u32(vandq_u32(v, vdupq_n_u32(0x8000)), 16);
    const uint32x4_t e = vandq_u32(v, vdupq_n_u32(0x7C00)), m = vandq_u32(v, vdupq_n_u32(0x3FF));
    const uint32x4_t normal = vaddq_u32(vshlq_n_u32(vandq_u32(v, vdupq_n_u32(0x7FFF)), 13), vdupq_n_u32(112u << 23));
    const uint32x4_t sub = vreinterpretq_u32_f32(vmulq_f32(vcvtq_f32_u32(m), vdupq_n_f32(0x1p-24f)));
    const uint32x4_t special = vorrq_u32(vorrq_u32(vdupq_n_u32(0x7F800000u), vshlq_n_u32(m, 13)),
                                         vbicq_u32(vdupq_n_u32(0x00400000u), vceqq_u32(m, vdupq_n_u32(0))));
    uint32x4_t r = vbslq_u32(vceqq_u32(e, vdupq_n_u32(0)), sub, normal);
    r = vbslq_u32(vceqq_u32(e, vdupq_n_u32(0x7C00)), special, r);
    vst1q_f32(out + i, vreinterpretq_f32_u32(vorrq_u32(r, sign)));
  }
#endif
  for (; i < n; ++i) out[i] = float_of(float_bits_of_half(h[i]));
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
