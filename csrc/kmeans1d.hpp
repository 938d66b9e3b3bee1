// 1-D k-means for weight sharing, the coreset codec and GCC: exact DP over sorted values,
// exact DP over a fine histogram refined by Lloyd, and k-means++ + Lloyd. Every sum runs in a
// fixed order in double, so orbitfl.kernels.ref_cluster reproduces the results bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace orbitfl {

constexpr int kKMeansMaxK = 256;
// Back-pointer cells (k * items, int32) the exact DP may use; beyond it "optimal" refuses and
// "hist" groups runs of sorted values into chunks first.
constexpr std::size_t kDpMaxCells = std::size_t{1} << 25;

enum class KMeansMethod { Optimal, Hist, Lloyd };

// "optimal" | "hist" | "lloyd"; anything else throws InvalidArgument.
KMeansMethod parse_kmeans_method(const std::string& name);

// Bins of the histogram behind "hist" (and the Lloyd acceleration).
int kmeans_hist_bins(int k);

// Clusters x[0..n) into k groups. centroids gets k ascending values (duplicates when x has fewer
// than k distinct values), labels gets n ids (nearest centroid, ties to the lower id). Returns
// the SSE. Throws InvalidArgument for k outside 1..256, k > n > 0, iters < 0, and NonFinite for
// NaN/Inf in x. For n == 0 the centroids are zeros. labels == nullptr: centroids only, returns 0.
double kmeans1d(const float* x, std::size_t n, int k, KMeansMethod method, int iters,
                std::uint64_t seed, float* centroids, std::uint8_t* labels);

// Throws InvalidArgument unless 1 <= k <= 256 centroids are finite and ascending.
void check_centroids(const float* centroids, int k);

// labels[i] = nearest centroid of x[i] (ties to the lower id); returns the SSE. Checks x and the
// centroids (check_centroids).
double kmeans_assign(const float* x, std::size_t n, const float* centroids, int k,
                     std::uint8_t* labels);

// kmeans_assign's labels packed at `bits` bits each (pack_bits' layout) into
// out[packed_size(n, bits)], without the SSE: the coreset codec's labelling and packing in one
// pass. Same checks as kmeans_assign, and InvalidArgument unless 1 <= bits <= 8 and 2^bits >= k.
void kmeans_pack(const float* x, std::size_t n, const float* centroids, int k, int bits,
                 std::uint8_t* out);

// kmeans1d's centroids without its checks, for a caller that has checked 1 <= k <= n, iters >= 0
// and x finite, and knows its range [lo, hi] (GCC finds it in its own first pass).
void kmeans_centroids_in_range(const float* x, std::size_t n, int k, KMeansMethod method, int iters,
                               std::uint64_t seed, float lo, float hi, float* centroids);

// kmeans_assign's labels without its checks or SSE (the caller checked x and the centroids),
// written to labels a block of at most kLabelBlock values at a time, fn(ctx, i0, m) called after
// each block (labels[i0, i0 + m) are set), in order: for GCC, which computes its distance keys
// from a block's labels while the block is still in L1.
constexpr std::size_t kLabelBlock = 256;
using LabelBlockFn = void (*)(void* ctx, std::size_t i0, std::size_t m);
void label_blocks(const float* x, std::size_t n, const float* centroids, int k, std::uint8_t* labels,
                  LabelBlockFn fn, void* ctx);

}  // namespace orbitfl
