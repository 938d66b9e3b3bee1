// GCC centroid compression. orbitfl/kernels/ref_cluster.py (gcc_encode/gcc_decode) is the same in
// NumPy; keep the two in step.
#include "gcc.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bitpack.hpp"
#include "common.hpp"
#include "simd.hpp"

namespace orbitfl {

int gcc_id_bits(std::size_t k) {
  int b = 0;
  while ((std::size_t{1} << b) < k) ++b;
  return b < 1 ? 1 : b;
}

GccShape gcc_shape(std::size_t n, int k, double rho) {
  require(k >= 1 && k <= kKMeansMaxK, "k must be in 1..256, got " + std::to_string(k));
  require(std::isfinite(rho), "rho must be finite");
  require(rho >= 0.0 && rho <= 1.0, "rho must be in [0, 1], got " + std::to_string(rho));
  GccShape s;
  s.centroids = std::min(static_cast<std::size_t>(k), n);
  s.replaced = std::min(n, static_cast<std::size_t>(std::floor(rho * static_cast<double>(n))));
  s.id_bits = gcc_id_bits(s.centroids);
  return s;
}

namespace {

// Distance of a value to its centroid, as the twin computes it.
inline double dist_of(const float* acc, const float* c, const std::uint8_t* labels, std::size_t i) {
  return std::fabs(static_cast<double>(acc[i]) - static_cast<double>(c[labels[i]]));
}

}  // namespace

void gcc_encode(const float* x, std::size_t n, int k, double rho, float* residual, int iters,
                std::uint64_t seed, KMeansMethod method, float* centroids, std::uint8_t* mask,
                std::uint8_t* ids, float* exact) {
  const GccShape shape = gcc_shape(n, k, rho);
  require(iters >= 0, "iters must be >= 0, got " + std::to_string(iters));
  // One branch-free pass checks x (and, with a residual, stores x + residual and checks both);
  // the messages keep their order (x, residual, sum) whatever values come first.
  // Scratch of n values is left uninitialised (std::vector would zero ~8 bytes per value first);
  // every element is written before it is read.
  std::unique_ptr<float[]> acc_store;
  const float* acc = x;
  constexpr float kMax = std::numeric_limits<float>::max();
  int bad_x = 0;
  if (residual != nullptr) {
    acc_store.reset(new float[n]);
    int bad_res = 0, bad_sum = 0;
    float* as = acc_store.get();
    for (std::size_t i = 0; i < n; ++i) {
      as[i] = x[i] + residual[i];
      bad_x |= std::fabs(x[i]) <= kMax ? 0 : 1;
      bad_res |= std::fabs(residual[i]) <= kMax ? 0 : 1;
      bad_sum |= std::fabs(as[i]) <= kMax ? 0 : 1;
    }
    if (bad_x) throw NonFinite("x contains NaN or Inf");
    if (bad_res) throw NonFinite("residual contains NaN or Inf");
    if (bad_sum) throw NonFinite("x + residual contains NaN or Inf");
    acc = acc_store.get();
  } else {
    for (std::size_t i = 0; i < n; ++i) bad_x |= std::fabs(x[i]) <= kMax ? 0 : 1;
    if (bad_x) throw NonFinite("x contains NaN or Inf");
  }
  if (n == 0) return;
  const int ke = static_cast<int>(shape.centroids);
  kmeans1d(acc, n, ke, method, iters, seed, centroids, nullptr);

  // The floor(rho*n) values nearest their centroid, ties to the lower index. The r-th smallest
  // distance T is found without a distance array: non-negative doubles order like their bit
  // patterns, so a histogram of the top 16 bits (made while labelling, which also keeps each
  // value's 16-bit key) finds the bin holding rank r, and nth_element over that bin's distances
  // alone finishes it. Everything below T is replaced, then values at exactly T in index order
  // until r are taken. Only values in T's bin (about one in a hundred) need their distance again.
  std::unique_ptr<std::uint8_t[]> labels(new std::uint8_t[n]);
  std::unique_ptr<std::uint16_t[]> keys(new std::uint16_t[n]);
  std::vector<std::size_t> hist(std::size_t{1} << 16, 0);
  assign_dist_hist(acc, n, centroids, ke, labels.get(), keys.get(), hist.data());
  const std::uint8_t* lab = labels.get();
  const std::uint16_t* key = keys.get();
  const std::size_t r = shape.replaced;
  double cut = 0.0;
  std::size_t at_cut = 0;
  // rep = key < lt || (key == eq && the exact test); r == 0 and r == n never compare equal.
  std::uint32_t lt = r == n ? 1u << 16 : 0, eq = 1u << 16;
  if (r > 0 && r < n) {
    std::size_t below = 0, bin = 0;
    while (below + hist[bin] < r) below += hist[bin++];
    std::vector<std::size_t> idx(hist[bin] + 1);
    std::size_t c = 0, i = 0;
#if defined(ORBITFL_SSE2)
    // Eight keys per compare; a block without a candidate (nearly all) costs one branch.
    const __m128i vb = _mm_set1_epi16(static_cast<short>(static_cast<std::uint16_t>(bin)));
    for (; i + 8 <= n; i += 8) {
      const __m128i eqv = _mm_cmpeq_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(key + i)), vb);
      unsigned m = static_cast<unsigned>(_mm_movemask_epi8(_mm_packs_epi16(eqv, _mm_setzero_si128())));
      while (m != 0) {
        idx[c++] = i + static_cast<std::size_t>(__builtin_ctz(m));
        m &= m - 1;
      }
    }
#endif
    for (; i < n; ++i) {
      idx[c] = i;
      c += key[i] == bin;
    }
    std::vector<double> cand(c);
    for (std::size_t j = 0; j < c; ++j) cand[j] = dist_of(acc, centroids, lab, idx[j]);
    auto rth = cand.begin() + static_cast<std::ptrdiff_t>(r - below - 1);
    std::nth_element(cand.begin(), rth, cand.end());
    cut = *rth;
    // Distances below T: the bins below, and the candidates below T (all left of rth now).
    std::size_t less = below;
    for (auto it = cand.begin(); it != rth; ++it) less += *it < cut ? 1 : 0;
    at_cut = r - less;
    lt = eq = static_cast<std::uint32_t>(bin);
  }

  std::unique_ptr<std::uint8_t[]> id_list(new std::uint8_t[r + 1]);
  std::uint8_t* ip = id_list.get();
  std::size_t e = 0, t = 0;
  const std::size_t ne = n - r;
  for (std::size_t i0 = 0; i0 < n; i0 += 8) {
    const std::size_t m = std::min<std::size_t>(8, n - i0);
    unsigned byte = 0;
    for (std::size_t p = 0; p < m; ++p) {
      const std::size_t i = i0 + p;
      std::size_t rep = key[i] < lt ? 1 : 0;
      if (key[i] == eq) {  // rare: only T's bin compares distances
        const double d = dist_of(acc, centroids, lab, i);
        const std::size_t tie = static_cast<std::size_t>(d == cut) & static_cast<std::size_t>(at_cut > 0);
        rep = static_cast<std::size_t>(d < cut) | tie;
        at_cut -= tie;
      }
      byte |= static_cast<unsigned>(rep) << p;
      ip[t] = lab[i];
      t += rep;
      if (e < ne) exact[e] = acc[i];
      e += 1 - rep;
      if (residual != nullptr) {
        // Selected by a bit mask, so an exact value's residual is +0.0, as the twin writes it.
        const float diff = acc[i] - centroids[lab[i]];
        std::uint32_t u;
        std::memcpy(&u, &diff, 4);
        u &= 0u - static_cast<std::uint32_t>(rep);
        std::memcpy(residual + i, &u, 4);
      }
    }
    mask[i0 >> 3] = static_cast<std::uint8_t>(byte);
  }
  pack_bits_unchecked(ip, t, shape.id_bits, ids);
}

std::size_t gcc_count_replaced(const std::uint8_t* mask, std::size_t mask_len, std::size_t n) {
  require(mask_len >= packed_size(n, 1), "mask has " + std::to_string(mask_len) + " bytes, " +
                                             std::to_string(packed_size(n, 1)) + " needed for n=" +
                                             std::to_string(n));
  std::size_t r = 0;
  for (std::size_t j = 0; j < n / 8; ++j) r += static_cast<std::size_t>(__builtin_popcount(mask[j]));
  for (std::size_t i = n / 8 * 8; i < n; ++i) r += (mask[i >> 3] >> (i & 7)) & 1u;
  return r;
}

void gcc_decode(const float* centroids, std::size_t k, const std::uint8_t* mask,
                std::size_t mask_len, const std::uint8_t* ids, std::size_t ids_len,
                const float* exact, std::size_t exact_len, std::size_t n, float* out) {
  require(k <= static_cast<std::size_t>(kKMeansMaxK),
          "centroids must have at most 256 entries, got " + std::to_string(k));
  const std::size_t r = gcc_count_replaced(mask, mask_len, n);
  require(r == 0 || k > 0, "mask marks replaced values but centroids is empty");
  require(exact_len == n - r, "exact must have " + std::to_string(n - r) + " values (n minus the mask's " +
                                  std::to_string(r) + " ones), got " + std::to_string(exact_len));
  const int bits = gcc_id_bits(k > 0 ? k : 1);
  require(ids_len >= packed_size(r, bits), "ids has " + std::to_string(ids_len) + " bytes, " +
                                               std::to_string(packed_size(r, bits)) + " needed for " +
                                               std::to_string(r) + " ids at " + std::to_string(bits) + " bits");
  std::vector<std::uint8_t> id(r);
  unpack_bits_unchecked(ids, r, bits, id.data());
  std::uint8_t top = 0;
  for (std::size_t t = 0; t < r; ++t) top = id[t] > top ? id[t] : top;
  require(r == 0 || top < k,
          "ids holds centroid id " + std::to_string(top) + ", but there are " + std::to_string(k) + " centroids");
  std::size_t t = 0, e = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if ((mask[i >> 3] >> (i & 7)) & 1u) {
      out[i] = centroids[id[t++]];
    } else {
      out[i] = exact[e++];
    }
  }
}

}  // namespace orbitfl
