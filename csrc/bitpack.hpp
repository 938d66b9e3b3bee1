// Dense LSB-first bit packing of small symbols: symbol i occupies bits [i*bits, (i+1)*bits) of a
// little-endian bit stream. Shared by every codec that sends b-bit codes (quantization, sign,
// centroid ids); the unchecked entry points are for kernels that produced the symbols themselves.
#pragma once

#include <cstddef>
#include <cstdint>

namespace orbitfl {

// Bytes needed for n symbols of `bits` bits.
constexpr std::size_t packed_size(std::size_t n, int bits) {
  return (n * static_cast<std::size_t>(bits) + 7) / 8;
}

// Throws InvalidArgument unless 1 <= bits <= 8.
void check_bits(int bits);

// Packs n symbols into out[0 .. packed_size(n, bits)); the padding bits of the last byte are 0.
// Throws InvalidArgument for bits outside 1..8 or a symbol >= 2**bits.
void pack_bits(const std::uint8_t* symbols, std::size_t n, int bits, std::uint8_t* out);

// As pack_bits, but the caller guarantees 1 <= bits <= 8 and every symbol < 2**bits.
void pack_bits_unchecked(const std::uint8_t* symbols, std::size_t n, int bits, std::uint8_t* out);

// Unpacks n symbols from packed[0 .. packed_len). Throws InvalidArgument for bits outside 1..8 or
// packed_len < packed_size(n, bits). Bytes beyond packed_size(n, bits) are ignored.
void unpack_bits(const std::uint8_t* packed, std::size_t packed_len, std::size_t n, int bits,
                 std::uint8_t* out);

// As unpack_bits, without checks: the caller guarantees the sizes.
void unpack_bits_unchecked(const std::uint8_t* packed, std::size_t n, int bits, std::uint8_t* out);

}  // namespace orbitfl
