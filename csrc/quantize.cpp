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
void min_max(const float* x, std::size_t m, float& mn_out, float& mx_out) {
  std::size_t i = 0;
  float mn = x[0], mx = x[0];
  bool bad = false;
#if defined(ORBITFL_SSE2)
  if (m >= 4) {
    __m128 vmn = _mm_set1_ps(x[0]), vmx = vmn;
    const __m128i expo = _mm_set1_epi32(0x7F800000);
    __m128i vbad = _mm_setzero_si128();
    for (; i + 4 <= m; i += 4) {
      __m128 v = _mm_loadu_ps(x + i);
      vmn = _mm_min_ps(vmn, v);
      vmx = _mm_max_ps(vmx, v);
      vbad = _mm_or_si128(vbad, _mm_cmpeq_epi32(_mm_and_si128(_mm_castps_si128(v), expo), expo));
    }
    alignas(16) float a[4], b[4];
    _mm_store_ps(a, vmn);
    _mm_store_ps(b, vmx);
    for (int k = 0; k < 4; ++k) {
      mn = std::min(mn, a[k]);
      mx = std::max(mx, b[k]);
    }
    bad = _mm_movemask_epi8(vbad) != 0;
  }
#elif defined(ORBITFL_NEON)
  if (m >= 4) {
    float32x4_t vmn = vdupq_n_f32(x[0]), vmx = vmn;
    const uint32x4_t expo = vdupq_n_u32(0x7F800000u);
    uint32x4_t vbad = vdupq_n_u32(0);
    for (; i + 4 <= m; i += 4) {
      float32x4_t v = vld1q_f32(x + i);
      vmn = vminq_f32(vmn, v);
      vmx = vmaxq_f32(vmx, v);
      vbad = vorrq_u32(vbad, vceqq_u32(vandq_u32(vreinterpretq_u32_f32(v), expo), expo));
    }
    mn = std::min(mn, vminvq_f32(vmn));
    mx = std::max(mx, vmaxvq_f32(vmx));
    bad = vmaxvq_u32(vbad) != 0;
  }
#endif
  for (; i < m; ++i) {
    bad |= !is_finite_bits(x[i]);
    mn = std::min(mn, x[i]);
    mx = std::max(mx, x[i]);
  }
  if (bad) throw NonFinite("x contains NaN or Inf");
  mn_out = mn;
  mx_out = mx;
}

inline std::uint8_t round_code(float x, float lo, float step, float levels) {
  float t = (x - lo) / step;
  t = std::min(t, levels);
  return static_cast<std::uint8_t>(std::nearbyint(t));  // default rounding: nearest, ties to even
}

// Deterministic codes of x[0..m) for one bucket, step > 0.
void codes_nearest(const float* x, std::size_t m, float lo, float step, float levels, std::uint8_t* q) {
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  const __m128 vlo = _mm_set1_ps(lo), vstep = _mm_set1_ps(step), vl = _mm_set1_ps(levels);
  for (; i + 16 <= m; i += 16) {
    __m128 t0 = _mm_min_ps(_mm_div_ps(_mm_sub_ps(_mm_loadu_ps(x + i), vlo), vstep), vl);
    __m128 t1 = _mm_min_ps(_mm_div_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 4), vlo), vstep), vl);
    __m128 t2 = _mm_min_ps(_mm_div_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 8), vlo), vstep), vl);
    __m128 t3 = _mm_min_ps(_mm_div_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 12), vlo), vstep), vl);
    // cvtps2dq rounds with MXCSR's mode: nearest, ties to even, like nearbyint.
    __m128i c01 = _mm_packs_epi32(_mm_cvtps_epi32(t0), _mm_cvtps_epi32(t1));
    __m128i c23 = _mm_packs_epi32(_mm_cvtps_epi32(t2), _mm_cvtps_epi32(t3));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm_packus_epi16(c01, c23));
  }
#elif defined(ORBITFL_NEON)
  const float32x4_t vlo = vdupq_n_f32(lo), vstep = vdupq_n_f32(step), vl = vdupq_n_f32(levels);
  for (; i + 16 <= m; i += 16) {
    float32x4_t t0 = vminq_f32(vdivq_f32(vsubq_f32(vld1q_f32(x + i), vlo), vstep), vl);
    float32x4_t t1 = vminq_f32(vdivq_f32(vsubq_f32(vld1q_f32(x + i + 4), vlo), vstep), vl);
    float32x4_t t2 = vminq_f32(vdivq_f32(vsubq_f32(vld1q_f32(x + i + 8), vlo), vstep), vl);
    float32x4_t t3 = vminq_f32(vdivq_f32(vsubq_f32(vld1q_f32(x + i + 12), vlo), vstep), vl);
    // vcvtn: round to nearest, ties to even.
    uint16x8_t c01 = vcombine_u16(vqmovun_s32(vcvtnq_s32_f32(t0)), vqmovun_s32(vcvtnq_s32_f32(t1)));
    uint16x8_t c23 = vcombine_u16(vqmovun_s32(vcvtnq_s32_f32(t2)), vqmovun_s32(vcvtnq_s32_f32(t3)));
    vst1q_u8(q + i, vcombine_u8(vqmovn_u16(c01), vqmovn_u16(c23)));
  }
#endif
  for (; i < m; ++i) q[i] = round_code(x[i], lo, step, levels);
}

// Stochastic codes: floor(t) + 1 with probability frac(t), drawn from (seed, global index).
void codes_stochastic(const float* x, std::size_t m, float lo, float step, float levels,
                      std::uint64_t key, std::uint64_t first_index, std::uint8_t* q) {
  for (std::size_t i = 0; i < m; ++i) {
    float t = std::min((x[i] - lo) / step, levels);
    float fl = std::floor(t);
    float frac = t - fl;  // exact
    float u = rng_unit_float(rng_draw(key, first_index + i));
    float c = std::min(fl + (u < frac ? 1.0f : 0.0f), levels);
    q[i] = static_cast<std::uint8_t>(c);
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
    lo[j] = lo_j;
    step[j] = step_j;
    for (std::size_t done = 0; done < m;) {
      const std::size_t take = std::min(m - done, kStage - fill);
      std::uint8_t* q = stage + fill;
      if (step_j == 0.0f) {
        std::memset(q, 0, take);  // a constant bucket (or one whose step underflows)
      } else if (stochastic) {
        codes_stochastic(x + s + done, take, lo_j, step_j, levels, key, s + done, q);
      } else {
        codes_nearest(x + s + done, take, lo_j, step_j, levels, q);
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
