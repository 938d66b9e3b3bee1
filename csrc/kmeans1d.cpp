// 1-D k-means. See kmeans1d.hpp; orbitfl/kernels/ref_cluster.py is the same algorithm in NumPy,
// written operation for operation, so keep the two in step.
#include "kmeans1d.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "bitpack.hpp"
#include "common.hpp"
#include "rng.hpp"
#include "simd.hpp"

namespace orbitfl {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

void check_finite(const float* x, std::size_t n, const char* name) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) throw NonFinite(std::string(name) + " contains NaN or Inf");
  }
}

// The range of x and whether every value is finite, in one pass without an early exit (SSE2:
// four lanes; the compiler does not vectorize a float min reduction on its own).
bool range_finite(const float* x, std::size_t n, float* lo_out, float* hi_out) {
  float lo = x[0], hi = x[0];
  int finite = 1;
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  if (n >= 4) {
    __m128 vlo = _mm_loadu_ps(x), vhi = vlo;
    const __m128 big = _mm_set1_ps(std::numeric_limits<float>::max());
    const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
    __m128 ok = _mm_castsi128_ps(_mm_set1_epi32(-1));
    for (; i + 4 <= n; i += 4) {
      const __m128 v = _mm_loadu_ps(x + i);
      vlo = _mm_min_ps(vlo, v);
      vhi = _mm_max_ps(vhi, v);
      ok = _mm_and_ps(ok, _mm_cmple_ps(_mm_and_ps(v, absmask), big));  // false for NaN, Inf
    }
    alignas(16) float a[4], b[4];
    _mm_store_ps(a, vlo);
    _mm_store_ps(b, vhi);
    finite = _mm_movemask_ps(ok) == 0xF ? 1 : 0;
    lo = std::min(std::min(a[0], a[1]), std::min(a[2], a[3]));
    hi = std::max(std::max(b[0], b[1]), std::max(b[2], b[3]));
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    finite &= std::fabs(v) <= std::numeric_limits<float>::max() ? 1 : 0;
  }
  *lo_out = lo;
  *hi_out = hi;
  return finite != 0;
}

// Whether every value of a short block is finite (no early exit; SSE2 four lanes at a time).
bool all_finite(const float* x, std::size_t n) {
  constexpr float kMax = std::numeric_limits<float>::max();
  int ok = 1;
  std::size_t i = 0;
#if defined(ORBITFL_SSE2)
  const __m128 big = _mm_set1_ps(kMax);
  const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7FFFFFFF));
  __m128 okv = _mm_castsi128_ps(_mm_set1_epi32(-1));
  for (; i + 4 <= n; i += 4) okv = _mm_and_ps(okv, _mm_cmple_ps(_mm_and_ps(_mm_loadu_ps(x + i), absmask), big));
  ok = _mm_movemask_ps(okv) == 0xF ? 1 : 0;
#endif
  for (; i < n; ++i) ok &= std::fabs(x[i]) <= kMax ? 1 : 0;
  return ok != 0;
}

// Nearest of ascending centroids, ties to the lower id: v lies above count_below(v), the number
// of midpoints strictly below it; among equal centroids the first one takes the value.
//
// count_below is found through a table instead of a binary search over the midpoints (a chain
// of dependent loads per value, the cost of every assignment pass): a uniform grid of cells over
// [mids[0], mids[k-2]], cell(v) = clamp(floor((v - mids[0]) * scale)), monotone in v because
// each step is. below_[c] = number of midpoints whose own cell is < c; those midpoints are all
// < v when cell(v) == c, so below_[c] <= count_below(v), and only midpoints in cell c can be
// < v as well: a short forward scan finishes the count exactly. Same labels as the search.
struct Labeler {
  static constexpr std::size_t kCells = 4096;
  std::vector<double> mids;
  std::vector<std::uint8_t> first;  // first[j] = lowest id whose centroid equals c[j]
  std::vector<std::uint16_t> below_;
  double base = 0.0, scale = 0.0;
  std::size_t cells = 1;

  std::size_t steps = 0;  // the most midpoints any one cell holds
  std::vector<double> padded;  // mids, then +inf: a step past the last midpoint compares false

  std::size_t cell(double v) const {
    double t = (v - base) * scale;
    t = t < 0.0 ? 0.0 : t;
    const double top = static_cast<double>(cells - 1);
    t = t > top ? top : t;
    // Through int64: a double -> size_t conversion is a compare-and-branch sequence on x86-64.
    return static_cast<std::size_t>(static_cast<std::int64_t>(t));
  }

  void reset(const float* c, int k) {
    mids.resize(static_cast<std::size_t>(k - 1));
    first.resize(static_cast<std::size_t>(k));
    for (int j = 0; j + 1 < k; ++j) {
      mids[j] = 0.5 * (static_cast<double>(c[j]) + static_cast<double>(c[j + 1]));
    }
    for (int j = 0; j < k; ++j) first[j] = static_cast<std::uint8_t>(j > 0 && c[j] == c[j - 1] ? first[j - 1] : j);
    cells = 1;
    base = mids.empty() ? 0.0 : mids.front();
    scale = 0.0;
    if (mids.size() > 1) {
      const double s = static_cast<double>(kCells) / (mids.back() - mids.front());
      if (std::isfinite(s) && s > 0.0) {
        cells = kCells;
        scale = s;
      }
    }
    below_.assign(cells + 1, 0);
    for (double m : mids) ++below_[cell(m) + 1];
    steps = 0;
    for (std::size_t t = 0; t < cells; ++t) {
      steps = std::max<std::size_t>(steps, below_[t + 1]);
      below_[t + 1] = static_cast<std::uint16_t>(below_[t + 1] + below_[t]);
    }
    padded.assign(mids.size() + steps + 1, kInf);
    std::copy(mids.begin(), mids.end(), padded.begin());
  }

  // The number of midpoints strictly below v: the same count of compare steps for every value
  // (the most midpoints one cell holds, usually 1), so no branch depends on v and none
  // mispredicts; a step adds 1 exactly while the next midpoint is below v.
  std::size_t below(double v) const { return below_in(v, cell(v)); }

  std::size_t operator()(double v) const { return first[below(v)]; }

  // cell() for a block of values, in a loop the compiler can vectorize; int32 holds any cell.
  static constexpr std::size_t kBlock = 256;
  void cells_of(const float* x, std::size_t m, std::uint32_t* out) const {
    const double top = static_cast<double>(cells - 1);
    for (std::size_t p = 0; p < m; ++p) {
      double t = (static_cast<double>(x[p]) - base) * scale;
      t = t < 0.0 ? 0.0 : t;
      t = t > top ? top : t;
      out[p] = static_cast<std::uint32_t>(static_cast<std::int32_t>(t));
    }
  }

  // below() given the value's cell.
  std::size_t below_in(double v, std::size_t cell_of_v) const {
    std::size_t j = below_[cell_of_v];
    const double* m = padded.data();
    for (std::size_t s = 0; s < steps; ++s) j += m[j] < v ? 1 : 0;
    return j;
  }
};

// Labels for k <= 16 by counting compares: a float v is above the double midpoint m exactly when
// it is above the largest float <= m, so the k-1 midpoints become floats and 4 values go through
// each compare at once, with no table and no branch. Same labels as the Labeler.
//
// On SSE2 the compares are on int32 order keys (the bits, with a negative float's other 31 bits
// inverted: signed order is float order, except -0.0 below +0.0): pcmpgtd runs on every vector
// integer port where cmpps has two, ~20 % of the labelling pass on the bench's large tensors. A
// midpoint of -0.0 becomes +0.0, so both zeros of x compare as floats do against it; against any
// other midpoint no key lies between theirs.
constexpr int kSmallK = 16;

struct SmallLabeler {
  float md[kSmallK - 1] = {};
  std::int32_t mkey[kSmallK - 1] = {};
  std::uint8_t first[kSmallK] = {};
  int nm = 0;
  bool dup = false;

  static std::int32_t order_key(float f) {
    std::int32_t u;
    std::memcpy(&u, &f, 4);
    return u ^ static_cast<std::int32_t>(static_cast<std::uint32_t>(u >> 31) >> 1);
  }

  void reset(const float* c, int k) {
    nm = k - 1;
    dup = false;
    for (int j = 0; j + 1 < k; ++j) {
      const double mid = 0.5 * (static_cast<double>(c[j]) + static_cast<double>(c[j + 1]));
      float f = static_cast<float>(mid);
      if (static_cast<double>(f) > mid) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
      md[j] = f;
      mkey[j] = order_key(f + 0.0f);  // -0.0 -> +0.0
    }
    for (int j = 0; j < k; ++j) {
      first[j] = static_cast<std::uint8_t>(j > 0 && c[j] == c[j - 1] ? first[j - 1] : j);
      dup = dup || first[j] != j;
    }
  }

  void operator()(const float* x, std::size_t n, std::uint8_t* out) const {
    std::size_t i = 0;
#if defined(ORBITFL_SSE2)
    __m128i mv[kSmallK - 1];
    for (int j = 0; j < nm; ++j) mv[j] = _mm_set1_epi32(mkey[j]);
    const auto keys = [](const float* p) {
      const __m128i u = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      return _mm_xor_si128(u, _mm_srli_epi32(_mm_srai_epi32(u, 31), 1));
    };
    for (; i + 16 <= n; i += 16) {
      const __m128i v0 = keys(x + i), v1 = keys(x + i + 4), v2 = keys(x + i + 8), v3 = keys(x + i + 12);
      __m128i c0 = _mm_setzero_si128(), c1 = c0, c2 = c0, c3 = c0;
      for (int j = 0; j < nm; ++j) {
        // a true compare is all ones, -1 as an integer
        c0 = _mm_sub_epi32(c0, _mm_cmpgt_epi32(v0, mv[j]));
        c1 = _mm_sub_epi32(c1, _mm_cmpgt_epi32(v1, mv[j]));
        c2 = _mm_sub_epi32(c2, _mm_cmpgt_epi32(v2, mv[j]));
        c3 = _mm_sub_epi32(c3, _mm_cmpgt_epi32(v3, mv[j]));
      }
      const __m128i b = _mm_packs_epi16(_mm_packs_epi32(c0, c1), _mm_packs_epi32(c2, c3));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), b);
    }
#elif defined(ORBITFL_NEON)
    float32x4_t mv[kSmallK - 1];
    for (int j = 0; j < nm; ++j) mv[j] = vdupq_n_f32(md[j]);
    for (; i + 16 <= n; i += 16) {
      const float32x4_t v0 = vld1q_f32(x + i), v1 = vld1q_f32(x + i + 4);
      const float32x4_t v2 = vld1q_f32(x + i + 8), v3 = vld1q_f32(x + i + 12);
      uint32x4_t c0 = vdupq_n_u32(0), c1 = c0, c2 = c0, c3 = c0;
      for (int j = 0; j < nm; ++j) {
        c0 = vsubq_u32(c0, vcgtq_f32(v0, mv[j]));
        c1 = vsubq_u32(c1, vcgtq_f32(v1, mv[j]));
        c2 = vsubq_u32(c2, vcgtq_f32(v2, mv[j]));
        c3 = vsubq_u32(c3, vcgtq_f32(v3, mv[j]));
      }
      const uint16x8_t lo = vcombine_u16(vmovn_u32(c0), vmovn_u32(c1));
      const uint16x8_t hi = vcombine_u16(vmovn_u32(c2), vmovn_u32(c3));
      vst1q_u8(out + i, vcombine_u8(vmovn_u16(lo), vmovn_u16(hi)));
    }
#endif
    for (; i < n; ++i) {
      int cnt = 0;
      for (int j = 0; j < nm; ++j) cnt += x[i] > md[j] ? 1 : 0;
      out[i] = static_cast<std::uint8_t>(cnt);
    }
    if (dup) {
      for (std::size_t p = 0; p < n; ++p) out[p] = first[out[p]];
    }
  }
};

// labels[0..n) = nearest centroid (ties to the lower id), by either labeler.
struct AnyLabeler {
  SmallLabeler small;
  Labeler table;
  bool is_small = true;

  AnyLabeler(const float* c, int k) : is_small(k <= kSmallK) {
    if (is_small) {
      small.reset(c, k);
    } else {
      table.reset(c, k);
    }
  }

  void operator()(const float* x, std::size_t n, std::uint8_t* labels) const {
    if (is_small) {
      small(x, n, labels);
      return;
    }
    std::uint32_t cb[Labeler::kBlock];
    for (std::size_t i0 = 0; i0 < n; i0 += Labeler::kBlock) {
      const std::size_t m = std::min(Labeler::kBlock, n - i0);
      table.cells_of(x + i0, m, cb);
      for (std::size_t p = 0; p < m; ++p) {
        labels[i0 + p] =
            static_cast<std::uint8_t>(table.first[table.below_in(static_cast<double>(x[i0 + p]), cb[p])]);
      }
    }
  }
};

double assign(const float* x, std::size_t n, const float* c, int k, std::uint8_t* labels) {
  AnyLabeler(c, k)(x, n, labels);
  double sse = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double e = static_cast<double>(x[i]) - static_cast<double>(c[labels[i]]);
    sse += e * e;
  }
  return sse;
}

// p[0] = 0, p[t+1] = p[t] + a[t] (p[1] = a[0], as NumPy's cumsum).
std::vector<double> prefix(const std::vector<double>& a) {
  std::vector<double> p(a.size() + 1, 0.0);
  for (std::size_t t = 0; t < a.size(); ++t) p[t + 1] = t == 0 ? a[0] : p[t] + a[t];
  return p;
}

struct Dp {
  const double* pc;
  const double* p1;
  const double* p2;
  const double* prev;
  double* cur;
  std::int32_t* arg;

  // Rows ilo..ihi with candidate columns jlo..jhi: solve the middle row, then both halves with
  // the columns the monotone argmin allows.
  void solve(std::int64_t ilo, std::int64_t ihi, std::int64_t jlo, std::int64_t jhi) {
    while (ilo <= ihi) {
      std::int64_t mid = (ilo + ihi) / 2;
      std::int64_t hi = std::min(jhi, mid - 1);
      double best = kInf;
      std::int64_t bestj = jlo;
      for (std::int64_t j = jlo; j <= hi; ++j) {
        double s = p1[mid] - p1[j];
        double val = prev[j] + ((p2[mid] - p2[j]) - s * s / (pc[mid] - pc[j]));
        if (val < best) {
          best = val;
          bestj = j;
        }
      }
      cur[mid] = best;
      arg[mid] = static_cast<std::int32_t>(bestj);
      solve(ilo, mid - 1, jlo, bestj);
      ilo = mid + 1;
      jlo = bestj;
    }
  }
};

// Optimal k-segmentation of weighted items sorted by value (count, sum, sum of squares of
// value - shift, smallest and largest value); writes the k segment means.
void dp_centroids(const std::vector<double>& cnt, const std::vector<double>& s1,
                  const std::vector<double>& s2, const std::vector<float>& item_lo,
                  const std::vector<float>& item_hi, int k, double shift, float* out) {
  const std::size_t big_m = cnt.size();
  std::vector<double> pc = prefix(cnt), p1 = prefix(s1), p2 = prefix(s2);
  std::vector<double> prev(big_m + 1, kInf), cur(big_m + 1);
  for (std::size_t i = 1; i <= big_m; ++i) {
    double s = p1[i] - p1[0];
    prev[i] = (p2[i] - p2[0]) - s * s / (pc[i] - pc[0]);
  }
  std::vector<std::int32_t> args((static_cast<std::size_t>(k) + 1) * (big_m + 1), 0);
  for (int m = 2; m <= k; ++m) {
    std::fill(cur.begin(), cur.end(), kInf);
    Dp dp{pc.data(), p1.data(), p2.data(), prev.data(), cur.data(),
          args.data() + static_cast<std::size_t>(m) * (big_m + 1)};
    dp.solve(m, static_cast<std::int64_t>(big_m), m - 1, static_cast<std::int64_t>(big_m) - 1);
    std::swap(prev, cur);
  }
  std::vector<std::size_t> bounds(static_cast<std::size_t>(k) + 1);
  bounds[k] = big_m;
  for (int m = k; m >= 2; --m) {
    bounds[m - 1] = static_cast<std::size_t>(args[static_cast<std::size_t>(m) * (big_m + 1) + bounds[m]]);
  }
  bounds[0] = 0;
  for (int j = 0; j < k; ++j) {
    std::size_t lo = bounds[j], hi = bounds[j + 1];
    float m = static_cast<float>(shift + (p1[hi] - p1[lo]) / (pc[hi] - pc[lo]));
    // A difference of prefix sums cancels when far larger values came first (+-3.4e38 next to
    // 1e5), so the mean can leave its segment's range; clamped back, the centroids ascend, as
    // Lloyd's binary searches need. Then + 0.0f turns -0.0 into +0.0 (a mean of tiny negatives
    // rounds to -0.0): no sort ever sees both zeros, whose order std::sort and np.sort differ on.
    const float vlo = item_lo[lo], vhi = item_hi[hi - 1];
    m = m < vlo ? vlo : (m > vhi ? vhi : m);
    out[j] = m + 0.0f;
  }
}

// k-means over the sorted values: exact DP over runs of equal values; with exact == false and
// more runs than the DP's memory allows, runs are grouped g at a time into > k chunks.
void sorted_centroids(const float* x, std::size_t n, int k, bool exact, float* out) {
  std::vector<float> s(n);
  for (std::size_t i = 0; i < n; ++i) s[i] = x[i];
  std::sort(s.begin(), s.end());
  for (float& v : s) v = v + 0.0f;  // -0.0 -> +0.0, whatever order the sort left them in
  std::vector<float> values;
  std::vector<double> cnt;
  for (std::size_t i = 0; i < n; ++i) {
    if (i == 0 || s[i] != s[i - 1]) {
      values.push_back(s[i]);
      cnt.push_back(0.0);
    }
    cnt.back() += 1.0;
  }
  const std::size_t u = values.size();
  if (u <= static_cast<std::size_t>(k)) {
    for (int j = 0; j < k; ++j) out[j] = values[std::min<std::size_t>(j, u - 1)];
    return;
  }
  const double shift = static_cast<double>(s[n / 2]);
  std::vector<double> s1(u), s2(u);
  for (std::size_t r = 0; r < u; ++r) {
    double dv = static_cast<double>(values[r]) - shift;
    s1[r] = cnt[r] * dv;
    s2[r] = cnt[r] * (dv * dv);
  }
  const std::size_t q = kDpMaxCells / static_cast<std::size_t>(k);
  if (u > q) {
    if (exact) {
      throw InvalidArgument("method='optimal' needs k * distinct values <= " + std::to_string(kDpMaxCells) +
                            ", got " + std::to_string(k) + " * " + std::to_string(u) + "; use 'hist'");
    }
    const std::size_t g = (u + q - 1) / q;
    const std::size_t chunks = (u + g - 1) / g;
    std::vector<double> c0(chunks, 0.0), c1(chunks, 0.0), c2(chunks, 0.0);
    std::vector<float> lo(chunks), hi(chunks);
    for (std::size_t r = 0; r < u; ++r) {
      c0[r / g] += cnt[r];
      c1[r / g] += s1[r];
      c2[r / g] += s2[r];
      if (r % g == 0) lo[r / g] = values[r];
      hi[r / g] = values[r];
    }
    cnt.swap(c0);
    s1.swap(c1);
    s2.swap(c2);
    dp_centroids(cnt, s1, s2, lo, hi, k, shift, out);
    return;
  }
  dp_centroids(cnt, s1, s2, values, values, k, shift, out);
}

// Values on a uniform grid over [lo, hi], with each bin's count, sums of x - shift and value
// range. Lloyd reads values only in the bins a decision boundary passes through, a few dozen of
// thousands: those bins' values are gathered when first needed, with a margin of neighbours, by
// a scan that copies only them, then sorted within their bin, with running sums of x - shift in
// that order. A boundary then splits a bin at a binary-searched position, and the two parts'
// sums are differences of running sums: a Lloyd round costs O(bins + k log m), not a pass over
// every value of every straddling bin. The working buffer is 12 bytes (a float and a double) per
// gathered value, a few per cent of n.
// Ascending LSD radix sort of floats by their order-preserving keys (the sign bit flipped, a
// negative value's other bits inverted too), 11 bits a pass, a pass skipped when all keys share its digit. It orders
// -0.0 before +0.0, which compare equal, so any sort of them serves the binary searches.
void radix_sort(float* v, std::size_t m) {
  if (m < 2) return;
  std::vector<std::uint32_t> a(m), b(m);
  for (std::size_t i = 0; i < m; ++i) {
    std::uint32_t u;
    std::memcpy(&u, v + i, 4);
    a[i] = u ^ ((u >> 31) ? 0xFFFFFFFFu : 0x80000000u);
  }
  for (int shift = 0; shift < 32; shift += 11) {
    std::size_t hist[2048] = {};
    for (std::size_t i = 0; i < m; ++i) ++hist[(a[i] >> shift) & 2047u];
    if (hist[(a[0] >> shift) & 2047u] == m) continue;
    std::size_t sum = 0;
    for (std::size_t& h : hist) {
      const std::size_t c = h;
      h = sum;
      sum += c;
    }
    for (std::size_t i = 0; i < m; ++i) b[hist[(a[i] >> shift) & 2047u]++] = a[i];
    a.swap(b);
  }
  for (std::size_t i = 0; i < m; ++i) {
    const std::uint32_t u = a[i] ^ ((a[i] >> 31) ? 0x80000000u : 0xFFFFFFFFu);
    std::memcpy(v + i, &u, 4);
  }
}

struct Bins {
  static constexpr std::size_t kNone = ~std::size_t{0};
  double shift = 0.0;
  double lo = 0.0, scale = 0.0;
  std::vector<std::int64_t> cnt;
  std::vector<double> s1, s2;
  std::vector<float> vmin, vmax;
  std::vector<std::size_t> slot;  // where bin t's values start in `values`, or kNone
  std::vector<float> values;      // gathered bins' values, ascending within a bin
  std::vector<double> run;        // run[p] = sum of (values - shift) from its bin's start to p
  const float* x = nullptr;
  std::size_t n = 0;

  std::size_t bin_of(double v) const {
    // Through int64, as in Labeler::cell (v >= lo, so the product is >= 0).
    return std::min(static_cast<std::size_t>(static_cast<std::int64_t>((v - lo) * scale)), cnt.size() - 1);
  }

  // bin_of for a block of values, in a loop the compiler can vectorize (the scatter that uses
  // the bins cannot be). Through int32: bins < 2^31, and 0 <= (v - lo) * scale.
  static constexpr std::size_t kBlock = 256;
  void bins_of(const float* v, std::size_t m, std::uint32_t* out) const {
    const std::int32_t top = static_cast<std::int32_t>(cnt.size() - 1);
    for (std::size_t p = 0; p < m; ++p) {
      const std::int32_t t = static_cast<std::int32_t>((static_cast<double>(v[p]) - lo) * scale);
      out[p] = static_cast<std::uint32_t>(t < top ? t : top);
    }
  }

  // Sum of (value - shift) over the first q sorted values of the bin starting at `at`.
  double head(std::size_t at, std::size_t q) const { return q == 0 ? 0.0 : run[at + q - 1]; }

  // Gathers the bins of `want` not gathered yet, in one pass over x, and sorts them.
  void gather(const std::vector<std::size_t>& want) {
    std::vector<std::size_t> next, fresh;
    const std::size_t start = values.size();
    std::size_t end = start;
    for (std::size_t t : want) {
      if (slot[t] != kNone || cnt[t] == 0) continue;
      slot[t] = 0;  // taken; the slot is set below, in bin order
      fresh.push_back(t);
    }
    std::sort(fresh.begin(), fresh.end());
    if (!fresh.empty()) next.assign(cnt.size(), kNone);
    for (std::size_t t : fresh) {
      slot[t] = next[t] = end;
      end += static_cast<std::size_t>(cnt[t]);
    }
    if (next.empty()) return;
    // Without a branch (about one value in ten is wanted, at random): every value is stored,
    // an unwanted one to a sink slot past the end that never advances.
    std::vector<std::size_t> step(cnt.size(), 0);
    for (std::size_t t = 0; t < cnt.size(); ++t) {
      step[t] = next[t] == kNone ? 0 : 1;
      next[t] = next[t] == kNone ? end : next[t];
    }
    values.resize(end + 1);
    run.resize(end);
    float* out = values.data();
    std::size_t* nx = next.data();
    const std::size_t* st = step.data();
    const float* xs = x;
    const std::size_t len = n;
    std::uint32_t tb[kBlock];
    for (std::size_t i0 = 0; i0 < len; i0 += kBlock) {
      const std::size_t m = std::min(kBlock, len - i0);
      bins_of(xs + i0, m, tb);
      for (std::size_t p = 0; p < m; ++p) {
        const std::size_t t = tb[p];
        out[nx[t]] = xs[i0 + p];
        nx[t] += st[t];
      }
    }
    values.resize(end);
    // Fresh bins took slots in ascending bin order, and bins are value ranges: one sort of the
    // fresh region puts every fresh bin's values, ascending, at its slot.
    radix_sort(out + start, end - start);
    for (std::size_t t : fresh) {
      float* v = out + slot[t];
      const std::size_t m = static_cast<std::size_t>(cnt[t]);
      double acc = 0.0;
      for (std::size_t p = 0; p < m; ++p) {
        const double d = static_cast<double>(v[p]) - shift;
        acc = p == 0 ? d : acc + d;
        run[slot[t] + p] = acc;
      }
    }
  }
};

Bins make_bins(const float* x, std::size_t n, double lo, double hi, int nbins) {
  Bins b;
  b.shift = 0.5 * (lo + hi) + 0.0;
  b.lo = lo;
  b.scale = static_cast<double>(nbins) / (hi - lo);
  b.x = x;
  b.n = n;
  const std::size_t nb = static_cast<std::size_t>(nbins);
  b.cnt.assign(nb, 0);
  b.s1.assign(nb, 0.0);
  b.s2.assign(nb, 0.0);
  b.vmin.assign(nb, std::numeric_limits<float>::infinity());
  b.vmax.assign(nb, -std::numeric_limits<float>::infinity());
  std::uint32_t tb[Bins::kBlock];
  for (std::size_t i0 = 0; i0 < n; i0 += Bins::kBlock) {
    const std::size_t m = std::min(Bins::kBlock, n - i0);
    b.bins_of(x + i0, m, tb);
    for (std::size_t p = 0; p < m; ++p) {
      const float xv = x[i0 + p];
      const double d = static_cast<double>(xv) - b.shift;
      const std::size_t t = tb[p];
      b.cnt[t] += 1;
      b.s1[t] += d;
      b.s2[t] += d * d;
      b.vmin[t] = std::min(b.vmin[t], xv);
      b.vmax[t] = std::max(b.vmax[t], xv);
    }
  }
  b.slot.assign(nb, Bins::kNone);
  return b;
}

// Lloyd on the raw values until no centroid moves. A bin whose smallest and largest value get
// the same label adds its (count, sum) in one step; a bin straddling boundaries is cut at each
// midpoint inside it (binary search over its sorted values) and each part adds its count and
// its difference of running sums. The labels, hence the counts, are per-value Lloyd's; sums run
// in bin order, and within a bin by parts in ascending order.
void lloyd(Bins& b, float* c, int k, int iters) {
  Labeler label;
  std::vector<double> sums(static_cast<std::size_t>(k)), counts(static_cast<std::size_t>(k));
  std::vector<float> next(static_cast<std::size_t>(k));
  const std::size_t nb = b.cnt.size();
  std::vector<std::size_t> j0(nb), j1(nb), want;
  constexpr std::size_t kMargin = 1;  // neighbours gathered with a straddling bin, each side
  for (int it = 0; it < iters; ++it) {
    label.reset(c, k);
    std::fill(sums.begin(), sums.end(), 0.0);
    std::fill(counts.begin(), counts.end(), 0.0);
    want.clear();
    bool missing = false;
    for (std::size_t t = 0; t < nb; ++t) {
      if (b.cnt[t] == 0) continue;
      j0[t] = label.below(static_cast<double>(b.vmin[t]));
      j1[t] = label.below(static_cast<double>(b.vmax[t]));
      if (label.first[j0[t]] != label.first[j1[t]]) {
        missing = missing || b.slot[t] == Bins::kNone;
        for (std::size_t u = t > kMargin ? t - kMargin : 0; u <= std::min(nb - 1, t + kMargin); ++u) want.push_back(u);
      }
    }
    if (missing) b.gather(want);
    for (std::size_t t = 0; t < nb; ++t) {
      if (b.cnt[t] == 0) continue;
      const std::size_t l0 = label.first[j0[t]], l1 = label.first[j1[t]];
      if (l0 == l1) {
        sums[l0] += b.s1[t];
        counts[l0] += static_cast<double>(b.cnt[t]);
        continue;
      }
      const std::size_t at = b.slot[t];
      const float* v = b.values.data() + at;
      const std::size_t m = static_cast<std::size_t>(b.cnt[t]);
      std::size_t q0 = 0;
      for (std::size_t j = j0[t]; j <= j1[t]; ++j) {
        // Values up to q1 have j midpoints below them: the first q1 values are <= mids[j].
        std::size_t q1 = m;
        if (j < j1[t]) {
          const double mid = label.mids[j];
          q1 = static_cast<std::size_t>(
              std::upper_bound(v + q0, v + m, mid, [](double a, float e) { return a < static_cast<double>(e); }) - v);
        }
        const std::size_t l = label.first[j];
        sums[l] += b.head(at, q1) - b.head(at, q0);
        counts[l] += static_cast<double>(q1 - q0);
        q0 = q1;
      }
    }
    for (int j = 0; j < k; ++j) {
      // -0.0 -> +0.0 before the sort, as in dp_centroids
      next[j] = counts[j] > 0.0 ? static_cast<float>(b.shift + sums[j] / counts[j]) + 0.0f : c[j];
    }
    std::sort(next.begin(), next.end());
    bool same = true;
    for (int j = 0; j < k; ++j) same = same && next[j] == c[j];
    if (same) break;
    std::copy(next.begin(), next.end(), c);
  }
}

// "hist" on a fixed-point grid. Each value becomes q = rint(x * 2^s), an int32 with |q| <= 2^30
// (s from max|x|), and u = q - q(lo) falls in fine bin u >> b, where b is the least shift that
// leaves at most 2^G bins (2^(G-1) or more when the lattice is that fine; G = 12 for k <= 32, 14
// above); per bin only its count and the integer sum of q, so the pass is all 32-bit lane
// arithmetic and one add to one 64-bit counter per value (see make_grid), and integer sums are
// exact in any order (the NumPy twin uses np.add.at). 2^12 counters are 32 KiB, in L1 beside the
// streaming input: with 2^15 (256 KiB, L2) every add moved a line in and a dirty one out, twice
// the cost of the rest of the pass. The DP starts on coarse bins, pairs of fine ones (at most
// 2048 or 8192, the former DP's bins).
// Lloyd then runs on the fine bins alone, each a weighted point at its exact mean: a bin joins
// the centroid nearest its mean (ties to the lower id) and a centroid becomes the mean of its
// bins' q, times 2^-s. No value is read after the histogram; with 2^14 or more bins over the
// range, the fixed point lies within a fine bin's width of the per-value one. The labels the
// callers make afterwards are exact per value. When the grid cannot resolve the data (a fine bin
// holding more than 128 times the mean count, fewer non-empty coarse bins than k, max|x| < 2^-97: huge
// outliers, few distinct values, small n, a coarse lattice) the per-value double path below
// (make_bins, lloyd) runs instead.
int grid_bits(int k) { return k <= 32 ? 12 : 14; }
// Fine bins per coarse bin of the DP start: log2 of it.
int grid_cshift(int k) { return grid_bits(k) - (kmeans_hist_bins(k) == 2048 ? 11 : 13); }
constexpr std::size_t kGridChunk = std::size_t{1} << 20;

struct Grid {
  float f = 1.0f;        // 2^s
  double unscale = 1.0;  // 2^-s
  float flo = 0.0f, fhi = 0.0f;       // min and max of x
  std::vector<std::int64_t> cnt, sq;  // per non-empty fine bin, ascending: count, sum of q
  std::vector<std::uint32_t> fine;    // its fine index
  std::vector<double> mean;           // sum q / count * 2^-s, non-decreasing
  std::int64_t qshift = 0;
  bool ok = false;
};

// max|x| < 2^e; 2^s must be a float, so below max|x| = 2^-97 the lattice would be coarse and
// the grid is not used (s = 128 says so).
int grid_shift(float lo, float hi) {
  int e = 0;
  std::frexp(std::max(std::fabs(static_cast<double>(lo)), std::fabs(static_cast<double>(hi))), &e);
  return std::min(30 - e, 128);
}

inline std::int32_t grid_q(float v, float f) {
#if defined(ORBITFL_SSE2)
  return _mm_cvtss_si32(_mm_set_ss(v * f));  // nearest even, without a libm call
#else
  return static_cast<std::int32_t>(std::nearbyint(v * f));
#endif
}

// u = q - qlo of a block of values (the vector conversions round to nearest even, as nearbyint).
inline void grid_us(const float* x, std::size_t m, float f, std::int32_t qlo, std::uint32_t* ub) {
  std::size_t p = 0;
#if defined(ORBITFL_SSE2)
  const __m128 vf = _mm_set1_ps(f);
  const __m128i vq = _mm_set1_epi32(qlo);
  for (; p + 4 <= m; p += 4) {
    const __m128i q = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(x + p), vf));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(ub + p), _mm_sub_epi32(q, vq));
  }
#elif defined(ORBITFL_NEON)
  const float32x4_t vf = vdupq_n_f32(f);
  const int32x4_t vq = vdupq_n_s32(qlo);
  for (; p + 4 <= m; p += 4) {
    const int32x4_t q = vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + p), vf));
    vst1q_u32(ub + p, vreinterpretq_u32_s32(vsubq_s32(q, vq)));
  }
#endif
  for (; p < m; ++p) ub[p] = static_cast<std::uint32_t>(grid_q(x[p], f)) - static_cast<std::uint32_t>(qlo);
}

Grid make_grid(const float* x, std::size_t n, float lo, float hi, int k) {
  Grid g;
  const int s = grid_shift(lo, hi);
  if (s > 127) return g;
  g.f = std::ldexp(1.0f, s);
  g.unscale = std::ldexp(1.0, -s);
  g.flo = lo;
  g.fhi = hi;
  const std::int32_t qlo = grid_q(lo, g.f), qhi = grid_q(hi, g.f);
  // q is monotone in x, so qlo <= q <= qhi and 0 <= u <= span <= 2^31.
  const std::uint32_t span = static_cast<std::uint32_t>(static_cast<std::int64_t>(qhi) - qlo);
  int b = 0;
  const int gbits = grid_bits(k);
  while ((span >> b) >= (std::uint32_t{1} << gbits)) ++b;  // b <= 32 - G
  const std::size_t nb = (span >> b) + 1;
  const std::uint32_t low = (std::uint32_t{1} << b) - 1;
  // One 64-bit counter per bin holds both sums: count << 40 | the sum of the offsets u & low
  // (< 2^20 for G = 12), so 2^20 values a chunk never carry into the count.
  std::vector<std::uint64_t> packed(nb, 0);
  std::vector<std::int64_t> cnt(nb, 0), off(nb, 0);
  constexpr std::size_t kBlock = 256;
  std::uint32_t ub[kBlock];
  for (std::size_t c0 = 0; c0 < n; c0 += kGridChunk) {
    const std::size_t c1 = std::min(n, c0 + kGridChunk);
    for (std::size_t i0 = c0; i0 < c1; i0 += kBlock) {
      const std::size_t m = std::min(kBlock, c1 - i0);
      grid_us(x + i0, m, g.f, qlo, ub);
      for (std::size_t p = 0; p < m; ++p) packed[ub[p] >> b] += (std::uint64_t{1} << 40) + (ub[p] & low);
    }
    for (std::size_t t = 0; t < nb; ++t) {
      cnt[t] += static_cast<std::int64_t>(packed[t] >> 40);
      off[t] += static_cast<std::int64_t>(packed[t] & ((std::uint64_t{1} << 40) - 1));
      packed[t] = 0;
    }
  }
  std::int64_t cmax = 0;
  for (std::size_t t = 0; t < nb; ++t) {
    if (cnt[t] == 0) continue;
    const std::int64_t sq = off[t] + cnt[t] * (static_cast<std::int64_t>(qlo) + (static_cast<std::int64_t>(t) << b));
    cmax = std::max(cmax, cnt[t]);
    g.fine.push_back(static_cast<std::uint32_t>(t));
    g.cnt.push_back(cnt[t]);
    g.sq.push_back(sq);
    g.mean.push_back(static_cast<double>(sq) / static_cast<double>(cnt[t]) * g.unscale);
  }
  g.qshift = (static_cast<std::int64_t>(qlo) + qhi) >> 1;  // floor, as NumPy's //
  // Whether the grid resolves the data at all, counting the coarse bins for the DP start.
  const int cshift = grid_cshift(k);
  std::size_t coarse = 0;
  for (std::size_t i = 0; i < g.fine.size(); ++i) {
    coarse += i == 0 || (g.fine[i] >> cshift) != (g.fine[i - 1] >> cshift) ? 1 : 0;
  }
  g.ok = (static_cast<std::uint64_t>(cmax) << gbits) <= 128 * static_cast<std::uint64_t>(n) &&
         coarse >= static_cast<std::size_t>(k);
  return g;
}

// The DP start: items are the coarse bins, sums of q - qshift (exact), and the sum of squares as
// if each fine bin's values sat at its mean (sequential in fine-bin order).
void grid_dp(const Grid& g, int k, float* out) {
  const int cshift = grid_cshift(k);
  std::vector<double> cnt, s1, s2;
  std::vector<float> vlo, vhi;
  std::vector<std::int64_t> i1;
  for (std::size_t i = 0; i < g.fine.size(); ++i) {
    const std::int64_t d = g.sq[i] - g.cnt[i] * g.qshift;
    const double dd = static_cast<double>(d);
    const double sq = dd * dd / static_cast<double>(g.cnt[i]);
    const float mv = static_cast<float>(g.mean[i]);
    if (i == 0 || (g.fine[i] >> cshift) != (g.fine[i - 1] >> cshift)) {
      cnt.push_back(0.0);
      i1.push_back(0);
      s2.push_back(0.0);
      vlo.push_back(mv);
      vhi.push_back(mv);
    }
    cnt.back() += static_cast<double>(g.cnt[i]);
    i1.back() += d;
    s2.back() += sq;
    vhi.back() = mv;
  }
  s1.resize(i1.size());
  for (std::size_t t = 0; t < i1.size(); ++t) {
    s1[t] = static_cast<double>(i1[t]) * g.unscale;
    s2[t] = s2[t] * g.unscale * g.unscale;
  }
  dp_centroids(cnt, s1, s2, vlo, vhi, k, static_cast<double>(g.qshift) * g.unscale, out);
}

// Lloyd on the fine bins as weighted points at their means: a bin whose mean is <= the midpoint
// of centroids j and j+1 lies below it (ties to the lower id); each centroid becomes the mean of
// its bins' q times 2^-s; until no centroid moves or iters rounds. A round is k binary searches
// over the means and prefix-sum differences.
void grid_lloyd(const Grid& g, float* c, int k, int iters) {
  const std::size_t kk = static_cast<std::size_t>(k), nf = g.fine.size();
  std::vector<std::int64_t> pc(nf + 1, 0), pq(nf + 1, 0);
  for (std::size_t i = 0; i < nf; ++i) {
    pc[i + 1] = pc[i] + g.cnt[i];
    pq[i + 1] = pq[i] + g.sq[i];
  }
  std::vector<std::size_t> below(kk + 1);
  std::vector<std::int64_t> counts(kk), sums(kk);
  std::vector<std::uint8_t> first(kk);
  std::vector<float> next(kk);
  const double* mb = g.mean.data();
  for (int it = 0; it < iters; ++it) {
    below[0] = 0;
    below[kk] = nf;
    for (std::size_t j = 0; j + 1 < kk; ++j) {
      const double mid = 0.5 * (static_cast<double>(c[j]) + static_cast<double>(c[j + 1]));
      below[j + 1] = static_cast<std::size_t>(std::upper_bound(mb, mb + nf, mid) - mb);
    }
    std::fill(counts.begin(), counts.end(), 0);
    std::fill(sums.begin(), sums.end(), 0);
    for (std::size_t j = 0; j < kk; ++j) {
      first[j] = static_cast<std::uint8_t>(j > 0 && c[j] == c[j - 1] ? first[j - 1] : j);
      counts[first[j]] += pc[below[j + 1]] - pc[below[j]];
      sums[first[j]] += pq[below[j + 1]] - pq[below[j]];
    }
    for (std::size_t j = 0; j < kk; ++j) {
      // Clamped to [lo, hi]: a mean of lattice points may round past the extreme values.
      float m = static_cast<float>(static_cast<double>(sums[j]) / static_cast<double>(counts[j]) * g.unscale);
      m = m < g.flo ? g.flo : (m > g.fhi ? g.fhi : m);
      next[j] = counts[j] > 0 ? m + 0.0f : c[j];
    }
    std::sort(next.begin(), next.end());
    bool same = true;
    for (std::size_t j = 0; j < kk; ++j) same = same && next[j] == c[j];
    if (same) break;
    std::copy(next.begin(), next.end(), c);
  }
}

inline double uniform(std::uint64_t key, std::uint64_t t) {
  return static_cast<double>(rng_draw(key, t) >> 11) * 0x1p-53;
}

// k-means++ seeding (Arthur & Vassilvitskii): each next centre drawn with probability ~ D^2.
void kmeanspp(const float* x, std::size_t n, int k, std::uint64_t seed, float* c) {
  const std::uint64_t key = rng_key(seed);
  std::size_t first = std::min(n - 1, static_cast<std::size_t>(uniform(key, 0) * static_cast<double>(n)));
  std::vector<double> d2(n);
  double xf = static_cast<double>(x[first]);
  for (std::size_t i = 0; i < n; ++i) {
    double diff = static_cast<double>(x[i]) - xf;
    d2[i] = diff * diff;
  }
  int chosen = 1;
  c[0] = x[first] + 0.0f;  // -0.0 -> +0.0: the sort below must not see both
  for (int t = 1; t < k; ++t) {
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i) total += d2[i];
    if (total == 0.0) break;
    double r = uniform(key, static_cast<std::uint64_t>(t)) * total;
    std::size_t pick = n;
    double acc = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      acc += d2[i];
      if (acc > r) {
        pick = i;
        break;
      }
    }
    if (pick == n) {
      for (std::size_t i = n; i-- > 0;) {
        if (d2[i] > 0.0) {
          pick = i;
          break;
        }
      }
    }
    c[chosen++] = x[pick] + 0.0f;
    double v = static_cast<double>(x[pick]);
    for (std::size_t i = 0; i < n; ++i) {
      double diff = static_cast<double>(x[i]) - v;
      d2[i] = std::min(d2[i], diff * diff);
    }
  }
  for (int j = chosen; j < k; ++j) c[j] = c[chosen - 1];
  std::sort(c, c + k);
}

}  // namespace

KMeansMethod parse_kmeans_method(const std::string& name) {
  if (name == "optimal") return KMeansMethod::Optimal;
  if (name == "hist") return KMeansMethod::Hist;
  if (name == "lloyd") return KMeansMethod::Lloyd;
  throw InvalidArgument("method must be one of optimal, hist, lloyd, got '" + name + "'");
}

int kmeans_hist_bins(int k) { return k <= 32 ? 2048 : 8192; }

namespace {

// "hist" on the grid: true when the grid resolved the data and the centroids are set.
bool hist_grid(const float* x, std::size_t n, int k, int iters, float lo, float hi, float* centroids) {
  // make_grid's resolution test needs (largest bin count) << grid_bits <= 128 n: with fewer
  // values than that even bins of one fail it, so skip the pass and its 2^12 counters.
  if ((std::size_t{1} << grid_bits(k)) > 128 * n) return false;
  const Grid g = make_grid(x, n, lo, hi, k);
  if (!g.ok) return false;
  grid_dp(g, k, centroids);
  grid_lloyd(g, centroids, k, iters);
  return true;
}

}  // namespace

void kmeans_centroids_in_range(const float* x, std::size_t n, int k, KMeansMethod method, int iters,
                               std::uint64_t seed, float lo, float hi, float* centroids) {
  if (lo == hi) {
    std::fill(centroids, centroids + k, lo + 0.0f);
  } else if (method == KMeansMethod::Optimal) {
    sorted_centroids(x, n, k, true, centroids);
  } else if (method == KMeansMethod::Hist && hist_grid(x, n, k, iters, lo, hi, centroids)) {
    // done on the grid
  } else {
    Bins b = make_bins(x, n, static_cast<double>(lo), static_cast<double>(hi), kmeans_hist_bins(k));
    if (method == KMeansMethod::Lloyd) {
      kmeanspp(x, n, k, seed, centroids);
    } else {
      std::vector<double> cnt, s1, s2;
      std::vector<float> vlo, vhi;
      for (std::size_t t = 0; t < b.cnt.size(); ++t) {
        if (b.cnt[t] == 0) continue;
        cnt.push_back(static_cast<double>(b.cnt[t]));
        s1.push_back(b.s1[t]);
        s2.push_back(b.s2[t]);
        vlo.push_back(b.vmin[t]);
        vhi.push_back(b.vmax[t]);
      }
      if (cnt.size() >= static_cast<std::size_t>(k)) {
        dp_centroids(cnt, s1, s2, vlo, vhi, k, b.shift, centroids);
      } else {
        sorted_centroids(x, n, k, false, centroids);
      }
    }
    lloyd(b, centroids, k, iters);
  }
}

double kmeans1d(const float* x, std::size_t n, int k, KMeansMethod method, int iters,
                std::uint64_t seed, float* centroids, std::uint8_t* labels) {
  require(k >= 1 && k <= kKMeansMaxK, "k must be in 1..256, got " + std::to_string(k));
  require(iters >= 0, "iters must be >= 0, got " + std::to_string(iters));
  if (n == 0) {
    std::fill(centroids, centroids + k, 0.0f);
    return 0.0;
  }
  float lo = x[0], hi = x[0];
  if (!range_finite(x, n, &lo, &hi)) throw NonFinite("x contains NaN or Inf");
  require(static_cast<std::size_t>(k) <= n,
          "k must be <= x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  kmeans_centroids_in_range(x, n, k, method, iters, seed, lo, hi, centroids);
  // The coreset codec relabels against its quantized codebook: no labels wanted, no pass.
  return labels == nullptr ? 0.0 : assign(x, n, centroids, k, labels);
}

void label_blocks(const float* x, std::size_t n, const float* centroids, int k, std::uint8_t* labels,
                  LabelBlockFn fn, void* ctx) {
  const AnyLabeler label(centroids, k);
  for (std::size_t i0 = 0; i0 < n; i0 += kLabelBlock) {
    const std::size_t m = std::min(kLabelBlock, n - i0);
    label(x + i0, m, labels + i0);
    fn(ctx, i0, m);
  }
}

void check_centroids(const float* centroids, int k) {
  require(k >= 1 && k <= kKMeansMaxK, "centroids must have 1..256 entries, got " + std::to_string(k));
  check_finite(centroids, static_cast<std::size_t>(k), "centroids");
  for (int j = 1; j < k; ++j) {
    if (centroids[j] < centroids[j - 1]) throw InvalidArgument("centroids must be ascending");
  }
}

double kmeans_assign(const float* x, std::size_t n, const float* centroids, int k,
                     std::uint8_t* labels) {
  check_centroids(centroids, k);
  float lo = 0.0f, hi = 0.0f;
  if (n > 0 && !range_finite(x, n, &lo, &hi)) throw NonFinite("x contains NaN or Inf");
  return assign(x, n, centroids, k, labels);
}

}  // namespace orbitfl

namespace orbitfl {

void kmeans_pack(const float* x, std::size_t n, const float* centroids, int k, int bits,
                 std::uint8_t* out) {
  check_centroids(centroids, k);
  require(bits >= 1 && bits <= 8 && (1 << bits) >= k,
          "bits must be in 1..8 with 2**bits >= " + std::to_string(k) + " centroids, got " + std::to_string(bits));
  // Blocks of 256 labels: a whole number of bytes at any width, so each packs on its own. Each
  // block is checked as it is labelled, from L1, instead of in a pass of its own over x.
  constexpr std::size_t kBlock = 256;
  std::uint8_t lab[kBlock];
  const AnyLabeler label(centroids, k);
  for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::size_t m = std::min(kBlock, n - i0);
    if (!all_finite(x + i0, m)) throw NonFinite("x contains NaN or Inf");
    label(x + i0, m, lab);
    pack_bits_unchecked(lab, m, bits, out + i0 / 8 * static_cast<std::size_t>(bits));
  }
}

}  // namespace orbitfl
