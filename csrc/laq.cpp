// Loss-aware quantization. orbitfl/kernels/ref_cluster.py (laq_quantize) is the same algorithm in
// NumPy, operation for operation, so keep the two in step.
#include "laq.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "bitpack.hpp"
#include "common.hpp"

namespace orbitfl {
namespace {

std::vector<double> levels(int bits) {
  if (bits == 1) return {-1.0, 1.0};
  const int nlev = (1 << bits) - 1;
  std::vector<double> lev(static_cast<std::size_t>(nlev));
  for (int j = 0; j < nlev; ++j) lev[j] = -1.0 + 2.0 * static_cast<double>(j) / static_cast<double>(nlev - 1);
  return lev;
}

// Nearest level of x / alpha (alpha > 0); ties round to even, as NumPy's rint. Clamping to the
// integer range first changes nothing (rint is monotone and keeps integers) and lets the
// 2^52 trick round without a libm call (baseline SSE2 has no rounding instruction).
inline std::uint8_t nearest(double x, double alpha, int bits) {
  if (bits == 1) return x >= 0.0 ? 1 : 0;
  const int nlev = (1 << bits) - 1;
  const double half = static_cast<double>((nlev - 1) / 2);
  const double top = static_cast<double>(nlev - 1);
  double u = (x / alpha + 1.0) * half;
  u = u < 0.0 ? 0.0 : (u > top ? top : u);
  double r = (u + 0x1p52) - 0x1p52;
  return static_cast<std::uint8_t>(r);
}

// A value's place in the sort: the unsigned order of these keys is the float order, and -0 gets
// +0's key, so equal values (including the two zeros) keep their index order in a stable sort.
inline std::uint32_t order_key(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7FFFFFFFu) == 0) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

struct Item {
  std::uint32_t key;
  float x;
  float d;
};

// Stable LSD radix sort by key (digits of 11, 11 and 10 bits), so the order is exactly the
// comparison sort "by value, then index" of the NumPy twin (np.argsort kind="stable"), at a few
// streaming passes instead of n log n compares; a digit every key shares is skipped.
void sort_by_value(std::vector<Item>& items) {
  const std::size_t n = items.size();
  std::vector<std::size_t> hist(3 * 2048, 0);
  for (const Item& it : items) {
    ++hist[it.key & 2047u];
    ++hist[2048 + ((it.key >> 11) & 2047u)];
    ++hist[4096 + (it.key >> 22)];
  }
  std::vector<Item> tmp(n);
  Item* src = items.data();
  Item* dst = tmp.data();
  for (int pass = 0; pass < 3; ++pass) {
    std::size_t* h = hist.data() + 2048 * pass;
    const int shift = 11 * pass;
    const std::uint32_t mask = pass == 2 ? 1023u : 2047u;
    if (h[(src[0].key >> shift) & mask] == n) continue;
    std::size_t sum = 0;
    for (std::uint32_t b = 0; b <= mask; ++b) {
      const std::size_t c = h[b];
      h[b] = sum;
      sum += c;
    }
    for (std::size_t i = 0; i < n; ++i) dst[h[(src[i].key >> shift) & mask]++] = src[i];
    std::swap(src, dst);
  }
  if (src != items.data()) std::copy(src, src + n, items.data());
}

// The alternation for bits >= 2, from alpha0 > 0. The values are sorted once (by value, then
// index) with prefix sums of d*x and d; the code is monotone in x, so each alternation needs only
// the L-1 positions where it steps (binary searches) and per-level sums from the prefix sums:
// O(L log n) per step instead of a pass over the data.
double fit_alpha(const float* x, const float* d, std::size_t n, int bits, const std::vector<double>& lev,
                 double alpha, int max_iter, double tol) {
  std::vector<double> xs(n), pdx(n + 1, 0.0), pd(n + 1, 0.0);
  {
    std::vector<Item> items(n);
    for (std::size_t i = 0; i < n; ++i) items[i] = {order_key(x[i]), x[i], d[i]};
    sort_by_value(items);
    for (std::size_t t = 0; t < n; ++t) {
      xs[t] = static_cast<double>(items[t].x);
      double ds = static_cast<double>(items[t].d);
      double dx = ds * xs[t];
      pdx[t + 1] = t == 0 ? dx : pdx[t] + dx;
      pd[t + 1] = t == 0 ? ds : pd[t] + ds;
    }
  }
  const std::size_t nlev = lev.size();
  std::vector<std::size_t> bound(nlev + 1);
  for (int it = 0; it < max_iter; ++it) {
    bound[0] = 0;
    bound[nlev] = n;
    for (std::size_t j = 1; j < nlev; ++j) {
      std::size_t lo = bound[j - 1], hi = n;
      while (lo < hi) {
        std::size_t mid = lo + (hi - lo) / 2;
        if (nearest(xs[mid], alpha, bits) >= j) {
          hi = mid;
        } else {
          lo = mid + 1;
        }
      }
      bound[j] = lo;
    }
    double num = 0.0, den = 0.0;
    for (std::size_t j = 0; j < nlev; ++j) {
      double tn = lev[j] * (pdx[bound[j + 1]] - pdx[bound[j]]);
      double td = (lev[j] * lev[j]) * (pd[bound[j + 1]] - pd[bound[j]]);
      num = j == 0 ? tn : num + tn;
      den = j == 0 ? td : den + td;
    }
    if (den == 0.0) break;
    double next = num / den;
    if (!(next > 0.0)) break;  // only rounding of the prefix sums could get here; keep alpha
    double delta = std::fabs(next - alpha);
    alpha = next;
    if (delta <= tol * alpha) break;
  }
  return alpha;
}

}  // namespace

LaqResult laq_quantize(const float* x, const float* d, std::size_t n, int bits, int max_iter,
                       double tol, std::uint8_t* packed) {
  require(bits >= 1 && bits <= 8, "bits must be in 1..8, got " + std::to_string(bits));
  require(max_iter >= 0, "max_iter must be >= 0, got " + std::to_string(max_iter));
  require(std::isfinite(tol), "tol must be finite");
  require(tol >= 0.0, "tol must be >= 0");
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) throw NonFinite("x contains NaN or Inf");
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(d[i])) throw NonFinite("d contains NaN or Inf");
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (!(d[i] > 0.0f)) throw InvalidArgument("d must be > 0 everywhere");
  }
  if (n == 0) return {0.0, 0.0};
  const std::vector<double> lev = levels(bits);
  const std::uint8_t zero_code = bits == 1 ? 1 : static_cast<std::uint8_t>(((1 << bits) - 2) / 2);
  double alpha = 0.0;
  // A compare, not std::fmax: GCC 12.2 for aarch64 dies with an internal compiler error when it
  // vectorises an fmax reduction over doubles. x is finite here, so the result is the same.
  for (std::size_t i = 0; i < n; ++i) {
    const double a = std::fabs(static_cast<double>(x[i]));
    alpha = a > alpha ? a : alpha;
  }
  if (alpha > 0.0 && bits == 1) {
    // codes = sign(x) for every alpha > 0, so the alternation's fixed point is closed-form
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      double dd = static_cast<double>(d[i]);
      num += dd * std::fabs(static_cast<double>(x[i]));
      den += dd;
    }
    alpha = num / den;
  } else if (alpha > 0.0) {
    alpha = fit_alpha(x, d, n, bits, lev, alpha, max_iter, tol);
  }
  // The least-squares alpha can exceed max|x| (a value rounded to a small level pulls it up, and
  // the prefix sums round), so near the top of float32 it can pass FLT_MAX: clamp it there, so
  // the receiver's scale is finite and the cast below stays in range.
  constexpr double kMaxAlpha = static_cast<double>(std::numeric_limits<float>::max());
  alpha = alpha > kMaxAlpha ? kMaxAlpha : alpha;
  const double alpha_f = static_cast<double>(static_cast<float>(alpha));
  std::vector<std::uint8_t> codes(n);
  double err = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    double xd = static_cast<double>(x[i]);
    std::uint8_t c = alpha_f > 0.0 ? nearest(xd, alpha_f, bits) : zero_code;
    codes[i] = c;
    double e = xd - static_cast<double>(static_cast<float>(alpha_f * lev[c]));
    err += static_cast<double>(d[i]) * (e * e);
  }
  pack_bits_unchecked(codes.data(), n, bits, packed);
  return {alpha_f, err};
}

void laq_dequantize(const std::uint8_t* packed, std::size_t packed_len, std::size_t n, int bits,
                    double alpha, float* out) {
  require(bits >= 1 && bits <= 8, "bits must be in 1..8, got " + std::to_string(bits));
  // |alpha| <= FLT_MAX keeps alpha * level (|level| <= 1) inside float32: no cast overflows.
  require(std::isfinite(alpha) && std::fabs(alpha) <= static_cast<double>(std::numeric_limits<float>::max()),
          "alpha must be finite and within the float32 range");
  std::vector<std::uint8_t> codes(n);
  unpack_bits(packed, packed_len, n, bits, codes.data());
  const std::vector<double> lev = levels(bits);
  std::uint8_t top = 0;
  for (std::size_t i = 0; i < n; ++i) top = codes[i] > top ? codes[i] : top;
  require(n == 0 || top < lev.size(), "packed holds code " + std::to_string(top) + ", but " +
                                          std::to_string(bits) + "-bit LAQ has " +
                                          std::to_string(lev.size()) + " levels");
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<float>(alpha * lev[codes[i]]);
}

}  // namespace orbitfl
