#include "quantize.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "bitpack.hpp"
#include "common.hpp"
#include "rng.hpp"
#include "simd.hpp"

namespace orbitfl {
namespace {

// Codes are staged in a small buffer (stays in L1) and packed in whole groups of 8 symbols, so a
// bucket of any size streams through without a full-size temporary.
constexpr std::size_t kStage = 2048;

inline bool is_finite_bits(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return (u & 0x7F800000u) != 0x7F800000u;
}

// Min and max of x[0..m), m >= 1; throws NonFinite on NaN/Inf. Which zero (+0/-0) comes out is
// unspecified (it depends on the order of comparisons); callers normalise it.
// Four independent accumulators per quantity hide the latency of min/max, the loop's bottleneck.
// Inf shows up in the min or max; NaN (which min/max may drop) is caught by an unordered compare.
void min_max(const float* x, std::size_t m, float& mn_out, float& mx_out) {
  std::size_t i = 0;
  float mn = x[0], mx = x[0];
  bool nan = false;
#if defined(ORBITFL_SSE2)
  if (m >= 16) {
    __m128 n0 = _mm_set1_ps(x[0]), n1 = n0, n2 = n0, n3 = n0;
    __m128 x0 = n0, x1 = n0, x2 = n0, x3 = n0;
    __m128 un = _mm_setzero_ps();
    for (; i + 16 <= m; i += 16) {
      const __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
      const __m128 c = _mm_loadu_ps(x + i + 8), d = _mm_loadu_ps(x + i + 12);
      n0 = _mm_min_ps(n0, a); n1 = _mm_min_ps(n1, b); n2 = _mm_min_ps(n2, c); n3 = _mm_min_ps(n3, d);
      x0 = _mm_max_ps(x0, a); x1 = _mm_max_ps(x1, b); x2 = _mm_max_ps(x2, c); x3 = _mm_max_ps(x3, d);
      un = _mm_or_ps(un, _mm_or_ps(_mm_cmpunord_ps(a, b), _mm_cmpunord_ps(c, d)));
    }
    alignas(16) float a[4], b[4];
    _mm_store_ps(a, _mm_min_ps(_mm_min_ps(n0, n1), _mm_min_ps(n2, n3)));
    _mm_store_ps(b, _mm_max_ps(_mm_max_ps(x0, x1), _mm_max_ps(x2, x3)));
    for (int k = 0; k < 4; ++k) {
      mn = std::min(mn, a[k]);
      mx = std::max(mx, b[k]);
    }
    nan = _mm_movemask_ps(un) != 0;
  }
#elif defined(ORBITFL_NEON)
  if (m >= 16) {
    float32x4_t n0 = vdupq_n_f32(x[0]), n1 = n0, n2 = n0, n3 = n0;
    float32x4_t x0 = n0, x1 = n0, x2 = n0, x3 = n0;
    uint32x4_t ord = vdupq_n_u32(0xFFFFFFFFu);
    for (; i + 16 <= m; i += 16) {
      const float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
      const float32x4_t c = vld1q_f32(x + i + 8), d = vld1q_f32(x + i + 12);
      n0 = vminq_f32(n0, a); n1 = vminq_f32(n1, b); n2 = vminq_f32(n2, c); n3 = vminq_f32(n3, d);
      x0 = vmaxq_f32(x0, a); x1 = vmaxq_f32(x1, b); x2 = vmaxq_f32(x2, c); x3 = vmaxq_f32(x3, d);
      // x == x is false only for NaN.
      ord = vandq_u32(ord, vandq_u32(vandq_u32(vceqq_f32(a, a), vceqq_f32(b, b)),
                                     vandq_u32(vceqq_f32(c, c), vceqq_f32(d, d))));
    }
    mn = std::min(mn, vminvq_f32(vminq_f32(vminq_f32(n0, n1), vminq_f32(n2, n3))));
    mx = std::max(mx, vmaxvq_f32(vmaxq_f32(vmaxq_f32(x0, x1), vmaxq_f32(x2, x3))));
    nan = vminvq_u32(ord) == 0;
  }
#endif
  for (; i < m; ++i) {
    nan |= x[i] != x[i];
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  if (nan || !is_finite_bits(mn) || !is_finite_bits(mx)) throw NonFinite("x contains NaN or Inf");
  mn_out = mn;
  mx_out = mx;
}

// t = (x - lo) * inv with inv = 1 / step rounded to float32 (a multiply instead of a divide per
// value: the divide was the hot loop's bottleneck); when 1 / step overflows (a subnormal step) the
// bucket divides instead: kMul = false. The NumPy reference applies the same rule.
template <bool kMul>
inline float scaled(float d, float step, float inv) {
  if constexpr (kMul) {
    (void)step;
    return d * inv;
  } else {
    (void)inv;
    return d / step;
  }
}

template <bool kMul>
void codes_nearest_t(const float* x, std::size_t m, float lo, float step, float inv, float levels,
                     std::uint8_t* q) {
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  const __m128 vlo = _mm_set1_ps(lo), vl = _mm_set1_ps(levels);
  const __m128 vf = _mm_set1_ps(kMul ? inv : step);
  auto t = [&](const float* p) {
    const __m128 d = _mm_sub_ps(_mm_loadu_ps(p), vlo);
    return _mm_min_ps(kMul ? _mm_mul_ps(d, vf) : _mm_div_ps(d, vf), vl);
  };
  for (; i + 16 <= m; i += 16) {
    // cvtps2dq rounds with MXCSR's mode: nearest, ties to even, like nearbyint.
    const __m128i c01 = _mm_packs_epi32(_mm_cvtps_epi32(t(x + i)), _mm_cvtps_epi32(t(x + i + 4)));
    const __m128i c23 = _mm_packs_epi32(_mm_cvtps_epi32(t(x + i + 8)), _mm_cvtps_epi32(t(x + i + 12)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(c01, c23));
  }
#elif defined(ORBITFL_NEON)
  const float32x4_t vlo = vdupq_n_f32(lo), vl = vdupq_n_f32(levels);
  const float32x4_t vf = vdupq_n_f32(kMul ? inv : step);
  auto c = [&](const float* p) {
    const float32x4_t d = vsubq_f32(vld1q_f32(p), vlo);
    // vcvtn: round to nearest, ties to even.
    return vqmovun_s32(vcvtnq_s32_f32(vminq_f32(kMul ? vmulq_f32(d, vf) : vdivq_f32(d, vf), vl)));
  };
  for (; i + 16 <= m; i += 16) {
    const uint16x8_t c01 = vcombine_u16(c(x + i), c(x + i + 4));
    const uint16x8_t c23 = vcombine_u16(c(x + i + 8), c(x + i + 12));
    vst1q_u8(q + i, vcombine_u8(vqmovn_u16(c01), vqmovn_u16(c23)));
  }
#endif
  for (; i < m; ++i) {
    const float t = std::min(scaled<kMul>(x[i] - lo, step, inv), levels);
    q[i] = static_cast<std::uint8_t>(std::nearbyint(t));  // default rounding: nearest, ties to even
  }
}

// Stochastic codes: floor(t) + 1 with probability frac(t), drawn from (seed, global index).
// t >= 0, so floor(t) is a truncating conversion (no libm call on baseline x86-64). The 24-bit
// draws are made first, in a loop of independent 64-bit mixes the CPU overlaps, then compared.
template <bool kMul>
void codes_stochastic_t(const float* x, std::size_t m, float lo, float step, float inv, float levels,
                        std::uint64_t key, std::uint64_t first_index, std::uint8_t* q) {
  constexpr std::size_t kChunk = 256;
  alignas(16) std::int32_t u24[kChunk];
  for (std::size_t c = 0; c < m; c += kChunk) {
    const std::size_t len = std::min(kChunk, m - c);
    for (std::size_t i = 0; i < len; ++i) {
      u24[i] = static_cast<std::int32_t>(rng_draw(key, first_index + c + i) >> 40);
    }
    const float* xc = x + c;
    std::uint8_t* qc = q + c;
    std::size_t i = 0;
#if defined(ORBITFL_SSE2)
    const __m128 vlo = _mm_set1_ps(lo), vl = _mm_set1_ps(levels), one = _mm_set1_ps(1.0f);
    const __m128 vf = _mm_set1_ps(kMul ? inv : step), unit = _mm_set1_ps(0x1p-24f);
    auto code = [&](std::size_t k) {
      const __m128 d = _mm_sub_ps(_mm_loadu_ps(xc + k), vlo);
      const __m128 t = _mm_min_ps(kMul ? _mm_mul_ps(d, vf) : _mm_div_ps(d, vf), vl);
      const __m128 fl = _mm_cvtepi32_ps(_mm_cvttps_epi32(t));
      const __m128 frac = _mm_sub_ps(t, fl);
      const __m128 u = _mm_mul_ps(_mm_cvtepi32_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(u24 + k))), unit);
      const __m128 c = _mm_min_ps(_mm_add_ps(fl, _mm_and_ps(_mm_cmplt_ps(u, frac), one)), vl);
      return _mm_cvttps_epi32(c);
    };
    for (; i + 16 <= len; i += 16) {
      const __m128i c01 = _mm_packs_epi32(code(i), code(i + 4));
      const __m128i c23 = _mm_packs_epi32(code(i + 8), code(i + 12));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qc + i), _mm_packus_epi16(c01, c23));
    }
#elif defined(ORBITFL_NEON)
    const float32x4_t vlo = vdupq_n_f32(lo), vl = vdupq_n_f32(levels), one = vdupq_n_f32(1.0f);
    const float32x4_t vf = vdupq_n_f32(kMul ? inv : step), unit = vdupq_n_f32(0x1p-24f);
    auto code = [&](std::size_t k) {
      const float32x4_t d = vsubq_f32(vld1q_f32(xc + k), vlo);
      const float32x4_t t = vminq_f32(kMul ? vmulq_f32(d, vf) : vdivq_f32(d, vf), vl);
      const float32x4_t fl = vcvtq_f32_s32(vcvtq_s32_f32(t));  // truncation = floor for t >= 0
      const float32x4_t frac = vsubq_f32(t, fl);
      const float32x4_t u = vmulq_f32(vcvtq_f32_s32(vld1q_s32(u24 + k)), unit);
      const uint32x4_t lt = vcltq_f32(u, frac);
      const float32x4_t inc = vreinterpretq_f32_u32(vandq_u32(lt, vreinterpretq_u32_f32(one)));
      return vqmovun_s32(vcvtq_s32_f32(vminq_f32(vaddq_f32(fl, inc), vl)));
    };
    for (; i + 16 <= len; i += 16) {
      const uint16x8_t c01 = vcombine_u16(code(i), code(i + 4));
      const uint16x8_t c23 = vcombine_u16(code(i + 8), code(i + 12));
      vst1q_u8(qc + i, vcombine_u8(vqmovn_u16(c01), vqmovn_u16(c23)));
    }
#endif
    for (; i < len; ++i) {
      const float t = std::min(scaled<kMul>(xc[i] - lo, step, inv), levels);
      const float fl = static_cast<float>(static_cast<std::int32_t>(t));
      const float frac = t - fl;  // exact
      const float u = static_cast<float>(u24[i]) * 0x1p-24f;
      qc[i] = static_cast<std::uint8_t>(std::min(fl + (u < frac ? 1.0f : 0.0f), levels));
    }
  }
}

void decode_run(const std::uint8_t* q, std::size_t m, float lo, float step, float* out) {
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  const __m128 vlo = _mm_set1_ps(lo), vstep = _mm_set1_ps(step);
  const __m128i zero = _mm_setzero_si128();
  for (; i + 16 <= m; i += 16) {
    __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i));
    __m128i w0 = _mm_unpacklo_epi8(b, zero), w1 = _mm_unpackhi_epi8(b, zero);
    __m128i d[4] = {_mm_unpacklo_epi16(w0, zero), _mm_unpackhi_epi16(w0, zero),
                    _mm_unpacklo_epi16(w1, zero), _mm_unpackhi_epi16(w1, zero)};
    for (int k = 0; k < 4; ++k) {
      __m128 qf = _mm_cvtepi32_ps(d[k]);
      _mm_storeu_ps(out + i + 4 * k, _mm_add_ps(vlo, _mm_mul_ps(qf, vstep)));
    }
  }
#elif defined(ORBITFL_NEON)
  const float32x4_t vlo = vdupq_n_f32(lo), vstep = vdupq_n_f32(step);
  for (; i + 16 <= m; i += 16) {
    uint8x16_t b = vld1q_u8(q + i);
    uint16x8_t w0 = vmovl_u8(vget_low_u8(b)), w1 = vmovl_u8(vget_high_u8(b));
    uint32x4_t d[4] = {vmovl_u16(vget_low_u16(w0)), vmovl_u16(vget_high_u16(w0)),
                       vmovl_u16(vget_low_u16(w1)), vmovl_u16(vget_high_u16(w1))};
    for (int k = 0; k < 4; ++k) {
      // Separate multiply and add (never vmla/vfma): the reference rounds twice.
      float32x4_t prod = vmulq_f32(vcvtq_f32_u32(d[k]), vstep);
      vst1q_f32(out + i + 4 * k, vaddq_f32(vlo, prod));
    }
  }
#endif
  for (; i < m; ++i) out[i] = lo + static_cast<float>(q[i]) * step;
}

}  // namespace

void quantize(const float* x, std::size_t n, int bits, std::size_t bucket, bool stochastic,
              std::uint64_t seed, std::uint8_t* packed, float* lo, float* step) {
  check_bits(bits);
  require(bucket >= 1, "bucket must be >= 1, got 0");
  const float levels = static_cast<float>((1u << bits) - 1);
  const std::uint64_t key = rng_key(seed);
  alignas(16) std::uint8_t stage[kStage];
  std::size_t fill = 0, packed_symbols = 0;
  const std::size_t nb = bucket_count(n, bucket);
  for (std::size_t j = 0; j < nb; ++j) {
    const std::size_t s = j * bucket, m = std::min(bucket, n - s);
    float mn, mx;
    min_max(x + s, m, mn, mx);
    // + 0.0f turns -0.0 into +0.0, so the outputs do not depend on which zero min/max met first.
    const float range = (mx - mn) + 0.0f;
    if (!is_finite_bits(range)) throw InvalidArgument("x: a bucket's range max - min overflows float32");
    const float lo_j = mn + 0.0f, step_j = range / levels;
    // The top level can still round past FLT_MAX when max is near it; dequantize would give Inf.
    if (!is_finite_bits(lo_j + levels * step_j)) {
      throw InvalidArgument("x: a bucket's top level lo + (2**bits - 1) * step overflows float32");
    }
    lo[j] = lo_j;
    step[j] = step_j;
    const float inv = 1.0f / step_j;
    const bool mul = is_finite_bits(inv);
    for (std::size_t done = 0; done < m;) {
      const std::size_t take = std::min(m - done, kStage - fill);
      std::uint8_t* q = stage + fill;
      if (step_j == 0.0f) {
        std::memset(q, 0, take);  // a constant bucket (or one whose step underflows)
      } else if (stochastic) {
        if (mul) {
          codes_stochastic_t<true>(x + s + done, take, lo_j, step_j, inv, levels, key, s + done, q);
        } else {
          codes_stochastic_t<false>(x + s + done, take, lo_j, step_j, inv, levels, key, s + done, q);
        }
      } else if (mul) {
        codes_nearest_t<true>(x + s + done, take, lo_j, step_j, inv, levels, q);
      } else {
        codes_nearest_t<false>(x + s + done, take, lo_j, step_j, inv, levels, q);
      }
      fill += take;
      done += take;
      if (fill == kStage) {
        pack_bits_unchecked(stage, kStage, bits, packed + packed_symbols / 8 * bits);
        packed_symbols += kStage;
        fill = 0;
      }
    }
  }
  if (fill) pack_bits_unchecked(stage, fill, bits, packed + packed_symbols / 8 * bits);
}

void dequantize(const std::uint8_t* packed, std::size_t packed_len, const float* lo,
                const float* step, std::size_t n_buckets, std::size_t n, int bits,
                std::size_t bucket, float* out) {
  check_bits(bits);
  require(bucket >= 1, "bucket must be >= 1, got 0");
  const std::size_t nb = bucket_count(n, bucket);
  require(n_buckets == nb, "lo and step must have ceil(n/bucket) = " + std::to_string(nb) +
                               " entries, got " + std::to_string(n_buckets));
  for (std::size_t j = 0; j < nb; ++j) {
    if (!is_finite_bits(lo[j])) throw NonFinite("lo contains NaN or Inf");
    if (!is_finite_bits(step[j])) throw NonFinite("step contains NaN or Inf");
    require(!(step[j] < 0.0f), "step must be >= 0");
  }
  const std::size_t need = packed_size(n, bits);
  require(packed_len >= need, "packed has " + std::to_string(packed_len) + " bytes, " +
                                  std::to_string(need) + " needed for n=" + std::to_string(n) +
                                  " at " + std::to_string(bits) + " bits");
  alignas(16) std::uint8_t stage[kStage];
  for (std::size_t c = 0; c < n; c += kStage) {
    const std::size_t cnt = std::min(kStage, n - c);
    unpack_bits_unchecked(packed + c / 8 * bits, cnt, bits, stage);
    for (std::size_t i = c; i < c + cnt;) {
      const std::size_t j = i / bucket;
      const std::size_t end = std::min((j + 1) * bucket, c + cnt);
      decode_run(stage + (i - c), end - i, lo[j], step[j], out + i);
      i = end;
    }
  }
}

}  // namespace orbitfl
