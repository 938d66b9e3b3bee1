// Gradient compression via centroid (GCC, Xie et al., IEEE TNNLS 2024): 1-D k-means of the
// error-compensated update; the fraction rho of values nearest their centroid ("most
// replaceable") travel as centroid ids, the rest exactly; the residual keeps what was lost.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kmeans1d.hpp"

namespace orbitfl {

// Sizes of an encoding, known before any data is read: min(k, n) centroids, floor(rho * n)
// replaced values, ceil(log2(centroids)) (>= 1) bits per id. Throws InvalidArgument for k
// outside 1..256 or rho outside [0, 1].
struct GccShape {
  std::size_t centroids;
  std::size_t replaced;
  int id_bits;
};
GccShape gcc_shape(std::size_t n, int k, double rho);

// Bits of a centroid id for k centroids: ceil(log2 k), at least 1.
int gcc_id_bits(std::size_t k);

// Encodes acc = x (+ residual, if not null). Outputs sized by gcc_shape: centroids[shape.centroids],
// mask[ceil(n/8)], ids[ceil(replaced * id_bits / 8)], exact[n - replaced]. If residual_out is not
// null it receives acc - decoded. residual is read only by the first pass, so residual_out may be
// residual itself (updated in place) or a separate array (residual then stays as it was); any
// other overlap is not allowed. Throws NonFinite for NaN/Inf in x, residual or their sum, before
// residual_out is written.
void gcc_encode(const float* x, std::size_t n, int k, double rho, const float* residual, int iters,
                std::uint64_t seed, KMeansMethod method, float* centroids, std::uint8_t* mask,
                std::uint8_t* ids, float* exact, float* residual_out);

// Number of replaced values the mask announces (its first n bits); InvalidArgument if short.
std::size_t gcc_count_replaced(const std::uint8_t* mask, std::size_t mask_len, std::size_t n);

// Inverse of gcc_encode; validates every length and id.
void gcc_decode(const float* centroids, std::size_t k, const std::uint8_t* mask,
                std::size_t mask_len, const std::uint8_t* ids, std::size_t ids_len,
                const float* exact, std::size_t exact_len, std::size_t n, float* out);

}  // namespace orbitfl
