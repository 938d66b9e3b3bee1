#include "sign.hpp"

#include <cmath>
#include <cstring>
#include <string>

#include "bitpack.hpp"
#include "common.hpp"
#include "simd.hpp"

namespace orbitfl {
namespace {

inline std::uint32_t nonfinite(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x7F800000u) == 0x7F800000u;
}

// acc[i] = x[i] + r[i] (or x[i]), recomputed by the same float add wherever it is needed instead
// of stored: no n-sized temporary.
template <bool kEf>
inline float acc_at(const float* x, const float* r, std::size_t i) {
  if constexpr (kEf) {
    return x[i] + r[i];
  } else {
    (void)r;
    return x[i];
  }
}

// NaN/Inf in x or r always makes acc non-finite, so one flag over acc detects every bad input;
// only then are the inputs scanned again to name the culprit.
[[noreturn]] void throw_nonfinite(const float* x, const float* r, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (nonfinite(x[i])) throw NonFinite("x contains NaN or Inf");
  }
  for (std::size_t i = 0; r && i < n; ++i) {
    if (nonfinite(r[i])) throw NonFinite("residual contains NaN or Inf");
  }
  throw NonFinite("x + residual overflows float32");
}

template <bool kEf>
float encode(const float* x, float* r, std::size_t n, std::uint8_t* packed) {
  // Pass 1: finiteness and the eight float64 lane sums of |acc| (lane j: i = j mod 8, left to
  // right), combined by a fixed tree; NumPy reproduces the order with a cumsum down the columns
  // of acc.reshape(-1, 8).
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::uint32_t bad = 0;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const float a = acc_at<kEf>(x, r, i + j);
      bad |= nonfinite(a);
      lane[j] += static_cast<double>(std::fabs(a));
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    const float a = acc_at<kEf>(x, r, i);
    bad |= nonfinite(a);
    lane[j] += static_cast<double>(std::fabs(a));
  }
  if (bad) throw_nonfinite(x, r, n);
  const double total = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  const float scale = n ? static_cast<float>(total / static_cast<double>(n)) : 0.0f;
  // Pass 2: sign bits (1 = acc >= 0, so -0.0 counts as positive) and the EF residual.
  std::size_t g = 0;
#if defined(ORBITFL_SSE2)
  const __m128 zero = _mm_setzero_ps(), vs = _mm_set1_ps(scale), vns = _mm_set1_ps(-scale);
  for (; g + 8 <= n; g += 8) {
    __m128 a0 = _mm_loadu_ps(x + g), a1 = _mm_loadu_ps(x + g + 4);
    if constexpr (kEf) {
      a0 = _mm_add_ps(a0, _mm_loadu_ps(r + g));
      a1 = _mm_add_ps(a1, _mm_loadu_ps(r + g + 4));
    }
    const __m128 m0 = _mm_cmpge_ps(a0, zero), m1 = _mm_cmpge_ps(a1, zero);
    packed[g / 8] = static_cast<std::uint8_t>(_mm_movemask_ps(m0) | (_mm_movemask_ps(m1) << 4));
    if constexpr (kEf) {
      const __m128 s0 = _mm_or_ps(_mm_and_ps(m0, vs), _mm_andnot_ps(m0, vns));
      const __m128 s1 = _mm_or_ps(_mm_and_ps(m1, vs), _mm_andnot_ps(m1, vns));
      _mm_storeu_ps(r + g, _mm_sub_ps(a0, s0));
      _mm_storeu_ps(r + g + 4, _mm_sub_ps(a1, s1));
    }
  }
#elif defined(ORBITFL_NEON)
  const uint32_t weights_arr[4] = {1, 2, 4, 8};
  const uint32x4_t weights = vld1q_u32(weights_arr);
  const float32x4_t zero = vdupq_n_f32(0.0f), vs = vdupq_n_f32(scale), vns = vdupq_n_f32(-scale);
  for (; g + 8 <= n; g += 8) {
    float32x4_t a0 = vld1q_f32(x + g), a1 = vld1q_f32(x + g + 4);
    if constexpr (kEf) {
      a0 = vaddq_f32(a0, vld1q_f32(r + g));
      a1 = vaddq_f32(a1, vld1q_f32(r + g + 4));
    }
    const uint32x4_t m0 = vcgeq_f32(a0, zero), m1 = vcgeq_f32(a1, zero);
    const uint32_t lo = vaddvq_u32(vandq_u32(m0, weights)), hi = vaddvq_u32(vandq_u32(m1, weights));
    packed[g / 8] = static_cast<std::uint8_t>(lo | (hi << 4));
    if constexpr (kEf) {
      vst1q_f32(r + g, vsubq_f32(a0, vbslq_f32(m0, vs, vns)));
      vst1q_f32(r + g + 4, vsubq_f32(a1, vbslq_f32(m1, vs, vns)));
    }
  }
#endif
  for (; g < n; g += 8) {
    std::uint8_t byte = 0;
    for (std::size_t k = 0; k < 8 && g + k < n; ++k) {
      const float a = acc_at<kEf>(x, r, g + k);
      byte |= static_cast<std::uint8_t>((a >= 0.0f) << k);
      if constexpr (kEf) r[g + k] = a - (a >= 0.0f ? scale : -scale);
    }
    packed[g / 8] = byte;
  }
  return scale;
}

}  // namespace

float sign_encode(const float* x, float* residual, std::size_t n, std::uint8_t* packed) {
  return residual ? encode<true>(x, residual, n, packed) : encode<false>(x, nullptr, n, packed);
}

void sign_decode(const std::uint8_t* packed, std::size_t packed_len, std::size_t n, float scale,
                 float* out) {
  const std::size_t need = packed_size(n, 1);
  require(packed_len >= need, "packed has " + std::to_string(packed_len) + " bytes, " +
                                  std::to_string(need) + " needed for n=" + std::to_string(n) +
                                  " at 1 bit");
  require(std::isfinite(scale), "scale must be finite (as a float32)");
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  const __m128i lo_bits = _mm_set_epi32(8, 4, 2, 1), hi_bits = _mm_set_epi32(128, 64, 32, 16);
  const __m128 vs = _mm_set1_ps(scale), vns = _mm_set1_ps(-scale);
  for (; i + 8 <= n; i += 8) {
    const __m128i b = _mm_set1_epi32(packed[i / 8]);
    const __m128 m0 = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(b, lo_bits), lo_bits));
    const __m128 m1 = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(b, hi_bits), hi_bits));
    _mm_storeu_ps(out + i, _mm_or_ps(_mm_and_ps(m0, vs), _mm_andnot_ps(m0, vns)));
    _mm_storeu_ps(out + i + 4, _mm_or_ps(_mm_and_ps(m1, vs), _mm_andnot_ps(m1, vns)));
  }
#elif defined(ORBITFL_NEON)
  const uint32_t lo_arr[4] = {1, 2, 4, 8}, hi_arr[4] = {16, 32, 64, 128};
  const uint32x4_t lo_bits = vld1q_u32(lo_arr), hi_bits = vld1q_u32(hi_arr);
  const float32x4_t vs = vdupq_n_f32(scale), vns = vdupq_n_f32(-scale);
  for (; i + 8 <= n; i += 8) {
    const uint32x4_t b = vdupq_n_u32(packed[i / 8]);
    vst1q_f32(out + i, vbslq_f32(vtstq_u32(b, lo_bits), vs, vns));
    vst1q_f32(out + i + 4, vbslq_f32(vtstq_u32(b, hi_bits), vs, vns));
  }
#endif
  for (; i < n; ++i) out[i] = (packed[i / 8] >> (i % 8)) & 1 ? scale : -scale;
}

}  // namespace orbitfl
