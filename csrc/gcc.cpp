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

// The first pass: acc = x (+ residual), whether x, the residual and acc are finite, and acc's
// range, without a branch on the data. Flags: 1 x, 2 residual, 4 the sum not finite.
int check_sum_range(const float* x, const float* residual, float* acc, std::size_t n, float* lo_out,
                    float* hi_out) {
  constexpr float kMax = std::numeric_limits<float>::max();
  float lo = x[0] + (residual != nullptr ? residual[0] : 0.0f), hi = lo;
  int bad = 0;
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  const __m128 big = _mm_set1_ps(kMax);
  const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
  __m128 okx = _mm_castsi128_ps(_mm_set1_epi32(-1)), okr = okx, oks = okx;
  __m128 vlo = _mm_set1_ps(lo), vhi = vlo;
  if (residual != nullptr) {
    for (; i + 4 <= n; i += 4) {
      const __m128 v = _mm_loadu_ps(x + i), r = _mm_loadu_ps(residual + i);
      const __m128 s = _mm_add_ps(v, r);
      _mm_storeu_ps(acc + i, s);
      okx = _mm_and_ps(okx, _mm_cmple_ps(_mm_and_ps(v, absmask), big));  // false for NaN, Inf
      okr = _mm_and_ps(okr, _mm_cmple_ps(_mm_and_ps(r, absmask), big));
      oks = _mm_and_ps(oks, _mm_cmple_ps(_mm_and_ps(s, absmask), big));
      vlo = _mm_min_ps(vlo, s);
      vhi = _mm_max_ps(vhi, s);
    }
  } else {
    for (; i + 4 <= n; i += 4) {
      const __m128 v = _mm_loadu_ps(x + i);
      okx = _mm_and_ps(okx, _mm_cmple_ps(_mm_and_ps(v, absmask), big));
      vlo = _mm_min_ps(vlo, v);
      vhi = _mm_max_ps(vhi, v);
    }
  }
  bad |= _mm_movemask_ps(okx) == 0xF ? 0 : 1;
  bad |= _mm_movemask_ps(okr) == 0xF ? 0 : 2;
  bad |= _mm_movemask_ps(oks) == 0xF ? 0 : 4;
  alignas(16) float l4[4], h4[4];
  _mm_store_ps(l4, vlo);
  _mm_store_ps(h4, vhi);
  for (int j = 0; j < 4; ++j) {
    lo = l4[j] < lo ? l4[j] : lo;
    hi = h4[j] > hi ? h4[j] : hi;
  }
#endif
  for (; i < n; ++i) {
    float v = x[i];
    bad |= std::fabs(v) <= kMax ? 0 : 1;
    if (residual != nullptr) {
      bad |= std::fabs(residual[i]) <= kMax ? 0 : 2;
      v += residual[i];
      acc[i] = v;
      bad |= std::fabs(v) <= kMax ? 0 : 4;
    }
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  *lo_out = lo;
  *hi_out = hi;
  return bad;
}

}  // namespace

void gcc_encode(const float* x, std::size_t n, int k, double rho, float* residual, int iters,
                std::uint64_t seed, KMeansMethod method, float* centroids, std::uint8_t* mask,
                std::uint8_t* ids, float* exact) {
  const GccShape shape = gcc_shape(n, k, rho);
  require(iters >= 0, "iters must be >= 0, got " + std::to_string(iters));
  if (n == 0) return;
  // One branch-free pass checks x (and, with a residual, stores x + residual and checks both)
  // and finds the range k-means needs; the messages keep their order (x, residual, sum) whatever
  // values come first. Scratch of n values is left uninitialised (std::vector would zero ~8
  // bytes per value first); every element is written before it is read.
  std::unique_ptr<float[]> acc_store;
  if (residual != nullptr) acc_store.reset(new float[n]);
  float lo = 0.0f, hi = 0.0f;
  const int bad = check_sum_range(x, residual, acc_store.get(), n, &lo, &hi);
  if (bad & 1) throw NonFinite("x contains NaN or Inf");
  if (bad & 2) throw NonFinite("residual contains NaN or Inf");
  if (bad & 4) throw NonFinite("x + residual contains NaN or Inf");
  const float* acc = residual != nullptr ? acc_store.get() : x;
  const int ke = static_cast<int>(shape.centroids);
  kmeans_centroids_in_range(acc, n, ke, method, iters, seed, lo, hi, centroids);

  // The floor(rho*n) values nearest their centroid, ties to the lower index. The r-th smallest
  // distance T is found without a distance array: a histogram of 16-bit keys that are monotone in
  // the distance (made while labelling, which also keeps each value's key) finds the bin holding rank r, and nth_element over that
  // bin's distances alone finishes it. Everything below T is replaced, then values at exactly T
  // in index order until r are taken. Only values in T's bin (about one in a hundred) need their
  // distance again.
  std::unique_ptr<std::uint8_t[]> labels(new std::uint8_t[n]);
  std::unique_ptr<std::uint16_t[]> keys(new std::uint16_t[n]);
  std::vector<std::size_t> hist(kDistKeys, 0);
  assign_dist_hist(acc, n, centroids, ke, labels.get(), keys.get(), hist.data());
  const std::uint8_t* lab = labels.get();
  const std::uint16_t* key = keys.get();
  const std::size_t r = shape.replaced;
  const std::size_t ne = n - r;
  if (r == 0 || r == n) {
    // Nothing, or everything, replaced: no threshold to find.
    std::memset(mask, r == 0 ? 0 : 0xFF, n / 8);
    if (n % 8 != 0) mask[n / 8] = static_cast<std::uint8_t>(r == 0 ? 0 : (1u << (n % 8)) - 1);
    if (r == 0) {
      std::memcpy(exact, acc, n * sizeof(float));
      if (residual != nullptr) std::fill(residual, residual + n, 0.0f);
    } else {
      pack_bits_unchecked(lab, n, shape.id_bits, ids);
      if (residual != nullptr) {
        for (std::size_t j = 0; j < n; ++j) residual[j] = acc[j] - centroids[lab[j]];
      }
    }
    return;
  }
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
  const double cut = *rth;
  // Distances below T: the bins below, and the candidates below T (all left of rth now).
  std::size_t less = below;
  for (auto it = cand.begin(); it != rth; ++it) less += *it < cut ? 1 : 0;
  std::size_t at_cut = r - less;

  // The split, 8 values (one mask byte) a step: the replaced bits by compares of keys against
  // T's bin, the few values in that bin by their distance; residuals kept by a lane mask; ids
  // and exact values compacted without a branch on the data.
  std::unique_ptr<std::uint8_t[]> id_list(new std::uint8_t[r + 1]);
  std::uint8_t* ip = id_list.get();
  std::size_t e = 0, t = 0;
  auto split_one = [&](std::size_t j, unsigned rep) {
    ip[t] = lab[j];
    t += rep;
    if (e < ne) exact[e] = acc[j];
    e += 1 - rep;
  };
  auto in_bin = [&](std::size_t j) -> unsigned {
    const double d = dist_of(acc, centroids, lab, j);
    const std::size_t tie = static_cast<std::size_t>(d == cut) & static_cast<std::size_t>(at_cut > 0);
    at_cut -= tie;
    return static_cast<unsigned>(static_cast<std::size_t>(d < cut) | tie);
  };
  i = 0;
#if defined(ORBITFL_SSE2)
  const __m128i bits_lo = _mm_setr_epi32(1, 2, 4, 8), bits_hi = _mm_setr_epi32(16, 32, 64, 128);
  for (; i + 8 <= n; i += 8) {
    const __m128i kv = _mm_loadu_si128(reinterpret_cast<const __m128i*>(key + i));
    unsigned byte = static_cast<unsigned>(_mm_movemask_epi8(_mm_packs_epi16(_mm_cmplt_epi16(kv, vb), _mm_setzero_si128())));
    unsigned eq = static_cast<unsigned>(_mm_movemask_epi8(_mm_packs_epi16(_mm_cmpeq_epi16(kv, vb), _mm_setzero_si128())));
    while (eq != 0) {  // rare: only T's bin compares distances, in index order
      const unsigned p = static_cast<unsigned>(__builtin_ctz(eq));
      byte |= in_bin(i + p) << p;
      eq &= eq - 1;
    }
    mask[i >> 3] = static_cast<std::uint8_t>(byte);
    if (residual != nullptr) {
      // acc - c[label] where replaced; an exact value's residual is +0.0, as the twin writes it.
      const float* cs = centroids;
      const std::uint8_t* l = lab + i;
      const __m128 c0 = _mm_setr_ps(cs[l[0]], cs[l[1]], cs[l[2]], cs[l[3]]);
      const __m128 c1 = _mm_setr_ps(cs[l[4]], cs[l[5]], cs[l[6]], cs[l[7]]);
      const __m128i vbyte = _mm_set1_epi32(static_cast<int>(byte));
      const __m128 mlo = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(vbyte, bits_lo), bits_lo));
      const __m128 mhi = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(vbyte, bits_hi), bits_hi));
      _mm_storeu_ps(residual + i, _mm_and_ps(_mm_sub_ps(_mm_loadu_ps(acc + i), c0), mlo));
      _mm_storeu_ps(residual + i + 4, _mm_and_ps(_mm_sub_ps(_mm_loadu_ps(acc + i + 4), c1), mhi));
    }
    for (unsigned p = 0; p < 8; ++p) split_one(i + p, (byte >> p) & 1u);
  }
#endif
  for (std::size_t i0 = i; i0 < n; i0 += 8) {
    const std::size_t m = std::min<std::size_t>(8, n - i0);
    unsigned byte = 0;
    for (std::size_t p = 0; p < m; ++p) {
      const std::size_t j = i0 + p;
      const unsigned rep = key[j] < bin ? 1u : (key[j] == bin ? in_bin(j) : 0u);
      byte |= rep << p;
      split_one(j, rep);
      if (residual != nullptr) residual[j] = rep != 0 ? acc[j] - centroids[lab[j]] : 0.0f;
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
