// 1-bit sign compression with one scale, and error-feedback sign (EF-signSGD).
#pragma once

#include <cstddef>
#include <cstdint>

namespace orbitfl {

// acc = x + residual (or x). Writes packed_size(n, 1) bytes of bits (1 = acc >= 0) and returns
// scale = float32(sum / n), 0 for n == 0, where sum = ((l0 + l1) + (l2 + l3)) + ((l4 + l5) + (l6 + l7))
// and lane lj is the left-to-right float64 sum of |acc[i]| over i = j mod 8. If residual is not null it
// becomes acc - scale * sign(acc). Throws NonFinite for NaN/Inf in x, residual or acc.
float sign_encode(const float* x, float* residual, std::size_t n, std::uint8_t* packed);

// out[i] = bit i ? scale : -scale. Throws InvalidArgument if packed_len < packed_size(n, 1) or
// scale is not finite.
void sign_decode(const std::uint8_t* packed, std::size_t packed_len, std::size_t n, float scale,
                 float* out);

}  // namespace orbitfl
