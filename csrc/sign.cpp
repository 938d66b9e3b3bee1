#include "sign.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "bitpack.hpp"
#include "common.hpp"
#include "simd.hpp"

namespace orbitfl {
namespace {

void check_finite(const float* a, std::size_t n, const char* name) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) throw NonFinite(std::string(name) + " contains NaN or Inf");
  }
}

}  // namespace

float sign_encode(const float* x, float* residual, std::size_t n, std::uint8_t* packed) {
  check_finite(x, n, "x");
  std::vector<float> acc_buf;
  const float* acc = x;
  if (residual) {
    check_finite(residual, n, "residual");
    acc_buf.resize(n);
    for (std::size_t i = 0; i < n; ++i) acc_buf[i] = x[i] + residual[i];
    check_finite(acc_buf.data(), n, "x + residual (overflow)");
    acc = acc_buf.data();
  }
  // Eight float64 lane sums (lane j adds |acc[i]| for i = j mod 8, left to right), then a fixed
  // tree: independent lanes vectorise, and NumPy reproduces the order exactly with a cumsum
  // down the columns of acc.reshape(-1, 8).
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) lane[j] += static_cast<double>(std::fabs(acc[i + j]));
  }
  for (int j = 0; i < n; ++i, ++j) lane[j] += static_cast<double>(std::fabs(acc[i]));
  const double total = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
  const float scale = n ? static_cast<float>(total / static_cast<double>(n)) : 0.0f;
  std::size_t g = 0;
#if defined(ORBITFL_SSE2)
  const __m128 zero = _mm_setzero_ps();
  for (; g + 8 <= n; g += 8) {
    // cmpge is true for -0.0 too, like the scalar acc >= 0.
    const int lo = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(acc + g), zero));
    const int hi = _mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(acc + g + 4), zero));
    packed[g / 8] = static_cast<std::uint8_t>(lo | (hi << 4));
  }
#elif defined(ORBITFL_NEON)
  const uint32_t weights_arr[4] = {1, 2, 4, 8};
  const uint32x4_t weights = vld1q_u32(weights_arr);
  for (; g + 8 <= n; g += 8) {
    const uint32_t lo = vaddvq_u32(vandq_u32(vcgeq_f32(vld1q_f32(acc + g), vdupq_n_f32(0.0f)), weights));
    const uint32_t hi = vaddvq_u32(vandq_u32(vcgeq_f32(vld1q_f32(acc + g + 4), vdupq_n_f32(0.0f)), weights));
    packed[g / 8] = static_cast<std::uint8_t>(lo | (hi << 4));
  }
#endif
  for (; g < n; g += 8) {
    std::uint8_t byte = 0;
    for (std::size_t k = 0; k < 8 && g + k < n; ++k) byte |= static_cast<std::uint8_t>((acc[g + k] >= 0.0f) << k);
    packed[g / 8] = byte;
  }
  if (residual) {
    for (std::size_t i = 0; i < n; ++i) residual[i] = acc[i] - (acc[i] >= 0.0f ? scale : -scale);
  }
  return scale;
}

void sign_decode(const std::uint8_t* packed, std::size_t packed_len, std::size_t n, float scale,
                 float* out) {
  const std::size_t need = packed_size(n, 1);
  require(packed_len >= need, "packed has " + std::to_string(packed_len) + " bytes, " +
                                  std::to_string(need) + " needed for n=" + std::to_string(n) +
                                  " at 1 bit");
  require(std::isfinite(scale), "scale must be finite (as a float32)");
  for (std::size_t i = 0; i < n; ++i) out[i] = (packed[i / 8] >> (i % 8)) & 1 ? scale : -scale;
}

}  // namespace orbitfl
