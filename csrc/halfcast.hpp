// float32 <-> IEEE binary16 and bfloat16 bit patterns, round to nearest even, NaN kept quiet.
// Integer arithmetic only (plus one exact float add for half subnormals), so every architecture
// gives the same bits, whether or not it has hardware conversions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace orbitfl {

void to_float16(const float* x, std::size_t n, std::uint16_t* out);
void from_float16(const std::uint16_t* h, std::size_t n, float* out);
void to_bfloat16(const float* x, std::size_t n, std::uint16_t* out);
void from_bfloat16(const std::uint16_t* h, std::size_t n, float* out);

}  // namespace orbitfl
