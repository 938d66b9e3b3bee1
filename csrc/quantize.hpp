// Uniform b-bit quantization with one (lo, step) per bucket of consecutive values (QSGD-style
// buckets), fused with bit packing, and its inverse. Semantics: orbitfl/_core.pyi.
#pragma once

#include <cstddef>
#include <cstdint>

namespace orbitfl {

constexpr std::size_t bucket_count(std::size_t n, std::size_t bucket) {
  return bucket ? (n + bucket - 1) / bucket : 0;
}

// x[0..n) -> packed[0 .. packed_size(n, bits)), lo and step[0 .. bucket_count(n, bucket)).
// lo[j] = min of bucket j (+0.0 for a zero), step[j] = (max - min) / (2**bits - 1) in float32;
// t = (x - lo) * inv with inv = 1 / step rounded to float32, or (x - lo) / step where 1 / step
// overflows (subnormal step); t clamped to 2**bits - 1; q = t rounded to nearest even, or
// stochastically (floor(t) + [u < frac(t)], u from the counter-based generator keyed by
// (seed, element index)); q = 0 where step == 0.
// Throws InvalidArgument for bits outside 1..8 or bucket == 0, NonFinite for NaN/Inf in x, and
// InvalidArgument when a bucket's max - min overflows float32.
void quantize(const float* x, std::size_t n, int bits, std::size_t bucket, bool stochastic,
              std::uint64_t seed, std::uint8_t* packed, float* lo, float* step);

// out[i] = lo[j] + q[i] * step[j] (two float32 roundings, in that order), j = i / bucket.
// n_buckets must equal bucket_count(n, bucket); packed_len >= packed_size(n, bits); lo and step
// finite, step >= 0. Throws InvalidArgument / NonFinite otherwise.
void dequantize(const std::uint8_t* packed, std::size_t packed_len, const float* lo,
                const float* step, std::size_t n_buckets, std::size_t n, int bits,
                std::size_t bucket, float* out);

}  // namespace orbitfl
