// Loss-aware quantization (Hou & Kwok, "Loss-aware weight quantization of deep networks",
// ICLR 2018): codes and one scale alpha per tensor minimising the curvature-weighted error
// sum d * (x - alpha * level[code])^2, found by alternating minimisation.
// Levels: bits == 1 -> {-1, +1}; bits >= 2 -> L = 2^bits - 1 levels -1 + 2j/(L-1) (with 0).
#pragma once

#include <cstddef>
#include <cstdint>

namespace orbitfl {

struct LaqResult {
  double alpha;  // a float32 value: what the receiver gets
  double error;  // sum d * (x - laq_dequantize(...))^2, summed in index order
};

// Writes packed_size(n, bits) bytes of packed codes to `packed`. Throws InvalidArgument for bits
// outside 1..8, max_iter < 0, tol < 0 or not finite, d <= 0, and NonFinite for NaN/Inf in x or d.
LaqResult laq_quantize(const float* x, const float* d, std::size_t n, int bits, int max_iter,
                       double tol, std::uint8_t* packed);

// The codes and error laq_quantize gives when its fit ends at `alpha` (rounded to float32): for
// an alpha laq_errors returned, the same bytes laq_quantize writes, without fitting again.
// Throws InvalidArgument for alpha < 0, not finite or beyond the float32 range, and as
// laq_quantize for bits and the inputs.
LaqResult laq_quantize_at(const float* x, const float* d, std::size_t n, int bits, double alpha,
                          std::uint8_t* packed);

// For each of nw widths (each in 0..8): the alpha laq_quantize fits and the weighted error it
// reports, without the codes; width 0 (not sent) is alpha 0 and sum d * x^2, in index order. One pass of checks and one bucketing of (x, d) serve all widths,
// so the results equal nw laq_quantize calls at a fraction of the cost (ALQ's allocation).
void laq_errors(const float* x, const float* d, std::size_t n, const int* widths, std::size_t nw, int max_iter,
                double tol, double* alphas, double* errors);

// out[i] = float(alpha * level[code i]). Throws InvalidArgument for a short buffer, a code
// beyond the last level, bits outside 1..8 or a non-finite alpha.
void laq_dequantize(const std::uint8_t* packed, std::size_t packed_len, std::size_t n, int bits,
                    double alpha, float* out);

}  // namespace orbitfl
