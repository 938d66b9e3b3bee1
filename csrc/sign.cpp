#include "sign.hpp"

#include <cmath>
#include <string>
#include <vector>

#include "bitpack.hpp"
#include "common.hpp"

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
  // One left-to-right float64 sum: the order the NumPy reference reproduces with cumsum.
  double total = 0.0;
  for (std::size_t i = 0; i < n; ++i) total += static_cast<double>(std::fabs(acc[i]));
  const float scale = n ? static_cast<float>(total / static_cast<double>(n)) : 0.0f;
  for (std::size_t g = 0; g < n; g += 8) {
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
