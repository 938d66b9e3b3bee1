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


// Labels, distance keys and their histogram, a block of labels at a time (from L1). The key is
// the top 16 bits of float(|double(acc) - double(c)|), monotone in the double distance; it is
// computed as the top bits of |acc - c| in float, which is the same float whenever acc - c is
// exact in double: always unless one operand is below the other's 2^-27 (a difference spans at
// most 25 + 28 bits then). A block holding such a value (0 < |acc| * 2^27 < max |c|), or any
// call whose smallest non-zero centroid is below max |acc| * 2^-27, takes the double formula.
// The float difference is the new residual of a replaced value, so it is kept in residual_out
// (the old residual, even when it is the same array, is already in acc) and the split does not
// gather the centroids again.
struct KeyPass {
  const float* acc;
  const float* c;
  const std::uint8_t* labels;
  float* diff;  // residual_out, or null
  std::uint16_t* keys;
  std::uint32_t* h[4];
  std::size_t* hist;
  bool count;  // histogram each block (else the caller counts the keys after the pass)
  float cmax;         // max |c|
  bool double_all;    // a centroid too small for the float formula
  std::size_t since;  // values counted since the tables were last flushed
  std::uint16_t kmin, kmax;
};

constexpr std::size_t kDistKeys = std::size_t{1} << 15;

void flush_tables(KeyPass& kp) {
  for (std::size_t t = kp.kmin; t <= kp.kmax; ++t) {
    kp.hist[t] += std::size_t{kp.h[0][t]} + kp.h[1][t] + kp.h[2][t] + kp.h[3][t];
    kp.h[0][t] = kp.h[1][t] = kp.h[2][t] = kp.h[3][t] = 0;
  }
  kp.kmin = 0x7FFF;
  kp.kmax = 0;
  kp.since = 0;
}

inline std::uint16_t key_of(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<std::uint16_t>((u & 0x7FFFFFFFu) >> 16);
}

void key_block(void* ctx, std::size_t i0, std::size_t m) {
  KeyPass& kp = *static_cast<KeyPass*>(ctx);
  const float* xv = kp.acc + i0;
  const std::uint8_t* lab = kp.labels + i0;
  const float* c = kp.c;
  float* dv = kp.diff != nullptr ? kp.diff + i0 : nullptr;
  std::uint16_t* kv = kp.keys + i0;
  const float cmax = kp.cmax;
  constexpr float kUp = 134217728.0f;  // 2^27
  std::uint16_t kmin = kp.kmin, kmax = kp.kmax;
  bool tiny = kp.double_all;
  std::size_t p = 0;
#if defined(ORBITFL_SSE2)
  const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
  const __m128 vcmax = _mm_set1_ps(cmax), vup = _mm_set1_ps(kUp), zero = _mm_setzero_ps();
  __m128 vtiny = zero;
  __m128i vmin = _mm_set1_epi16(0x7FFF), vmax = _mm_setzero_si128();
  for (; p + 8 <= m; p += 8) {
    __m128i kq[2];
    for (int h2 = 0; h2 < 2; ++h2) {
      const std::size_t q = p + 4 * static_cast<std::size_t>(h2);
      const __m128 v = _mm_loadu_ps(xv + q);
      const __m128 cv = _mm_setr_ps(c[lab[q]], c[lab[q + 1]], c[lab[q + 2]], c[lab[q + 3]]);
      const __m128 d = _mm_sub_ps(v, cv);
      if (dv != nullptr) _mm_storeu_ps(dv + q, d);
      kq[h2] = _mm_srli_epi32(_mm_castps_si128(_mm_and_ps(d, absmask)), 16);
      const __m128 av = _mm_and_ps(v, absmask);
      vtiny = _mm_or_ps(vtiny, _mm_and_ps(_mm_cmpgt_ps(av, zero), _mm_cmplt_ps(_mm_mul_ps(av, vup), vcmax)));
    }
    // keys <= 0x7F80 (|acc - c| rounds at most to +inf), so the signed pack and compares keep them
    const __m128i k8 = _mm_packs_epi32(kq[0], kq[1]);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(kv + p), k8);
    vmin = _mm_min_epi16(vmin, k8);
    vmax = _mm_max_epi16(vmax, k8);
  }
  tiny = tiny || _mm_movemask_ps(vtiny) != 0;
  alignas(16) std::uint16_t lo8[8], hi8[8];
  _mm_store_si128(reinterpret_cast<__m128i*>(lo8), vmin);
  _mm_store_si128(reinterpret_cast<__m128i*>(hi8), vmax);
  for (int j = 0; j < 8; ++j) {
    kmin = std::min(kmin, lo8[j]);
    kmax = std::max(kmax, hi8[j]);
  }
#endif
  for (; p < m; ++p) {
    const float d = xv[p] - c[lab[p]];
    if (dv != nullptr) dv[p] = d;
    kv[p] = key_of(d);
    const float av = std::fabs(xv[p]);
    tiny = tiny || (av > 0.0f && av * kUp < cmax);
    kmin = std::min(kmin, kv[p]);
    kmax = std::max(kmax, kv[p]);
  }
  if (tiny) {
    // Rare: the keys again by the double formula (the float differences stand as they are).
    for (p = 0; p < m; ++p) {
      kv[p] = key_of(static_cast<float>(dist_of(xv, c, lab, p)));
      kmin = std::min(kmin, kv[p]);
      kmax = std::max(kmax, kv[p]);
    }
  }
  kp.kmin = kmin;
  kp.kmax = kmax;
  if (!kp.count) return;
  // Distances crowd into a few bins, so neighbouring values often bump the same counter and each
  // bump would wait for the previous one's store: four tables, one per value mod 4.
  p = 0;
  for (; p + 4 <= m; p += 4) {
    ++kp.h[0][kv[p]];
    ++kp.h[1][kv[p + 1]];
    ++kp.h[2][kv[p + 2]];
    ++kp.h[3][kv[p + 3]];
  }
  for (; p < m; ++p) ++kp.h[0][kv[p]];
  kp.since += m;
  if (kp.since >= (std::size_t{1} << 30)) flush_tables(kp);  // uint32 counters, flushed before they wrap
}

// Labels, keys (and the float differences into diff, if not null) and the keys' counts:
// hist[key - base] for keys from base on. The caller has checked acc and the centroids.
void label_keys_hist(const float* acc, std::size_t n, const float* c, int k, float lo, float hi,
                     std::uint8_t* labels, float* diff, std::uint16_t* keys, std::vector<std::size_t>& hist,
                     std::size_t& base) {
  // A small tensor is counted after the pass over its keys' range alone: zeroing the 4 x 128 KiB
  // tables and 256 KiB of counts cost more than its whole pass.
  constexpr std::size_t kSmall = std::size_t{1} << 16;
  const bool big = n >= kSmall;
  std::vector<std::uint32_t> tables(big ? 4 * kDistKeys : 0, 0);
  if (big) hist.assign(kDistKeys, 0);
  KeyPass kp{};
  kp.count = big;
  kp.acc = acc;
  kp.c = c;
  kp.labels = labels;
  kp.diff = diff;
  kp.keys = keys;
  for (int j = 0; j < 4 && big; ++j) kp.h[j] = tables.data() + static_cast<std::size_t>(j) * kDistKeys;
  kp.hist = hist.data();
  const double amax = std::max(std::fabs(static_cast<double>(lo)), std::fabs(static_cast<double>(hi)));
  float cmax = 0.0f;
  for (int j = 0; j < k; ++j) {
    const float a = std::fabs(c[j]);
    cmax = std::max(cmax, a);
    kp.double_all = kp.double_all || (a > 0.0f && static_cast<double>(a) * 134217728.0 < amax);
  }
  kp.cmax = cmax;
  kp.kmin = 0x7FFF;
  kp.kmax = 0;
  label_blocks(acc, n, c, k, labels, key_block, &kp);
  if (big) {
    if (kp.since > 0) flush_tables(kp);
    base = 0;
    return;
  }
  base = kp.kmin;
  hist.assign(static_cast<std::size_t>(kp.kmax) - kp.kmin + 1, 0);
  for (std::size_t i = 0; i < n; ++i) ++hist[keys[i] - base];
}

}  // namespace

void gcc_encode(const float* x, std::size_t n, int k, double rho, const float* residual, int iters,
                std::uint64_t seed, KMeansMethod method, float* centroids, std::uint8_t* mask,
                std::uint8_t* ids, float* exact, float* residual_out) {
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
  std::vector<std::size_t> hist;
  std::size_t base = 0;
  label_keys_hist(acc, n, centroids, ke, lo, hi, labels.get(), residual_out, keys.get(), hist, base);
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
      if (residual_out != nullptr) std::fill(residual_out, residual_out + n, 0.0f);
    } else {
      pack_bits_unchecked(lab, n, shape.id_bits, ids);
      // residual_out already holds acc - c of every value
    }
    return;
  }
  std::size_t below = 0, bin = 0;
  while (below + hist[bin] < r) below += hist[bin++];
  std::vector<std::size_t> idx(hist[bin] + 1);
  bin += base;
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
    if (residual_out != nullptr) {
      // It holds acc - c: kept where replaced; an exact value's residual is +0.0, as the twin
      // writes it.
      const __m128i vbyte = _mm_set1_epi32(static_cast<int>(byte));
      const __m128 mlo = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(vbyte, bits_lo), bits_lo));
      const __m128 mhi = _mm_castsi128_ps(_mm_cmpeq_epi32(_mm_and_si128(vbyte, bits_hi), bits_hi));
      _mm_storeu_ps(residual_out + i, _mm_and_ps(_mm_loadu_ps(residual_out + i), mlo));
      _mm_storeu_ps(residual_out + i + 4, _mm_and_ps(_mm_loadu_ps(residual_out + i + 4), mhi));
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
      if (residual_out != nullptr && rep == 0) residual_out[j] = 0.0f;
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
