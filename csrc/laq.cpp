// Loss-aware quantization. orbitfl/kernels/ref_cluster.py (laq_quantize) is the same algorithm in
// NumPy, operation for operation, so keep the two in step.
#include "laq.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
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
// Branch-free: signs are random in an update, so branches here mispredict half the time.
inline std::uint32_t order_key(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  u &= (u & 0x7FFFFFFFu) != 0 ? 0xFFFFFFFFu : 0u;
  const std::uint32_t neg = static_cast<std::uint32_t>(static_cast<std::int32_t>(u) >> 31);
  return u ^ (neg | 0x80000000u);
}

// order_key's inverse (the key of +0 and -0 gives +0, which rounds like -0 everywhere here).
inline double key_value(std::uint32_t k) {
  const std::uint32_t u = (k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k;
  float v;
  std::memcpy(&v, &u, 4);
  return static_cast<double>(v);
}

// The values grouped by the top 16 bits of their order key: 65536 buckets of consecutive
// values, each 1/128 to 1/256 of its magnitude wide. One streaming pass gives each bucket's count
// and sums, instead of a full sort. The exact alternation reads values one by one only in the
// buckets a code step passes through; those are gathered when first needed (with neighbours,
// as the steps still move a little), by a scan of x that copies only the wanted buckets' values.
struct Buckets {
  static constexpr std::uint32_t kShift = 16;
  static constexpr std::size_t kIds = std::size_t{1} << (32 - kShift);
  static constexpr std::size_t kNone = ~std::size_t{0};
  struct Item {
    float x, d;
  };
  // Per non-empty bucket (ascending): its smallest and largest possible key. A bucket holding a
  // finite value holds only finite keys (Inf and NaN patterns fill buckets of their own), so
  // both ends are finite values; the ends of the bucket, not its values' extremes, decide
  // whether a code step may pass through it, which costs one fewer compare per value.
  std::vector<std::uint32_t> kmin, kmax;
  std::vector<double> pdx, pd;     // prefix sums over the non-empty buckets of their d*x, d sums
  std::vector<std::uint32_t> cnt;  // values per non-empty bucket
  std::vector<std::size_t> slot;   // where bucket m's values (index order) start in items, or kNone
  std::vector<Item> items;
  const float* x = nullptr;
  const float* d = nullptr;
  std::size_t n = 0;

  // Gathers the buckets of `want` not gathered yet in one pass over x: next[id] is where the
  // next value of bucket id goes, kNone for buckets not taken in this pass.
  void gather(const std::vector<std::size_t>& want) {
    std::size_t end = items.size();
    std::vector<std::size_t> next;
    for (std::size_t m : want) {
      if (slot[m] != kNone) continue;
      if (next.empty()) next.assign(kIds, kNone);
      slot[m] = end;
      next[kmin[m] >> kShift] = end;
      end += cnt[m];
    }
    if (next.empty()) return;
    items.resize(end);
    // Locals, so the stores below cannot be taken to alias the loop's bounds and inputs.
    Item* out = items.data();
    std::size_t* nx = next.data();
    const float* xs = x;
    const float* ds = d;
    const std::size_t len = n;
    for (std::size_t i = 0; i < len; ++i) {
      std::size_t& p = nx[order_key(xs[i]) >> kShift];
      if (p != kNone) out[p++] = {xs[i], ds[i]};
    }
  }
};

Buckets make_buckets(const float* x, const float* d, std::size_t n) {
  constexpr std::size_t kIds = Buckets::kIds;
  // One (d*x, d) pair per bucket (one cache line), through raw pointers: stores of doubles the
  // compiler cannot rule out aliasing would otherwise reload each vector's data pointer.
  struct Sums {
    double dx, d;
  };
  std::vector<std::uint32_t> cnt_store(kIds, 0);
  std::vector<Sums> sums_store(kIds, Sums{0.0, 0.0});
  std::uint32_t* cnt = cnt_store.data();
  Sums* sums = sums_store.data();
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t b = order_key(x[i]) >> Buckets::kShift;
    const double ds = static_cast<double>(d[i]);
    ++cnt[b];
    sums[b].dx += ds * static_cast<double>(x[i]);
    sums[b].d += ds;
  }
  Buckets bk;
  bk.x = x;
  bk.d = d;
  bk.n = n;
  std::size_t m = 0;
  bk.pdx.push_back(0.0);
  bk.pd.push_back(0.0);
  for (std::size_t b = 0; b < kIds; ++b) {
    if (cnt[b] == 0) continue;
    bk.kmin.push_back(static_cast<std::uint32_t>(b << Buckets::kShift));
    bk.kmax.push_back(static_cast<std::uint32_t>(b << Buckets::kShift) | ((1u << Buckets::kShift) - 1u));
    // p[1] = a[0], then p[t+1] = p[t] + a[t], as NumPy's cumsum
    bk.pdx.push_back(m == 0 ? sums[b].dx : bk.pdx.back() + sums[b].dx);
    bk.pd.push_back(m == 0 ? sums[b].d : bk.pd.back() + sums[b].d);
    bk.cnt.push_back(cnt[b]);
    ++m;
  }
  bk.slot.assign(m, Buckets::kNone);
  return bk;
}

// One alternation's update: alpha = sum_j lev_j T_dx[j] / sum_j lev_j^2 T_d[j] (sums in level
// order), or false when it must stop (no weight, or a non-positive fit only rounding can give).
bool update(const std::vector<double>& lev, const std::vector<double>& tdx, const std::vector<double>& td,
            double& alpha, double tol, bool& converged) {
  double num = 0.0, den = 0.0;
  for (std::size_t j = 0; j < lev.size(); ++j) {
    double tn = lev[j] * tdx[j];
    double tdd = (lev[j] * lev[j]) * td[j];
    num = j == 0 ? tn : num + tn;
    den = j == 0 ? tdd : den + tdd;
  }
  if (den == 0.0) return false;
  double next = num / den;
  if (!(next > 0.0)) return false;  // only rounding of the sums could get here; keep alpha
  double delta = std::fabs(next - alpha);
  alpha = next;
  converged = delta <= tol * alpha;
  return true;
}

constexpr std::size_t kCoarseMin = std::size_t{1} << 16;

// The alternation for bits >= 2, from alpha0 > 0, in two phases of max_iter steps in all (at
// least one exact).
// Coarse: every bucket takes the code of its smallest possible value and adds its sums through
// prefix sums (O(L log B) a step, no value read) until the update is within tol. Exact, from
// there: the code is monotone in x, so the buckets whose smallest and largest value share a code
// form one run per level (prefix sums) and only buckets a code step passes through are read
// value by value, after the run, in bucket order, index order within. Its codes are exactly the
// nearest levels; starting near the fixed point, its steps stay in a few buckets, so few values
// are ever read.
double fit_alpha(Buckets& bk, int bits, const std::vector<double>& lev, double alpha, int max_iter,
                 double tol) {
  const std::size_t nb = bk.kmin.size();
  const std::size_t nlev = lev.size();
  // first[j]: first bucket whose smallest (lo) / largest (hi) value has code >= j
  std::vector<std::size_t> first_lo(nlev + 1), first_hi(nlev + 1);
  std::vector<double> tdx(nlev), td(nlev);
  std::vector<std::size_t> want;
  // Neighbours gathered with a bucket a step passes through: 6-12 % of the magnitude each side.
  constexpr std::size_t kMargin = 16;
  auto first_at_least = [&](const std::vector<std::uint32_t>& keys, std::size_t from, std::size_t j) {
    std::size_t lo = from, hi = nb;
    while (lo < hi) {
      std::size_t mid = lo + (hi - lo) / 2;
      if (nearest(key_value(keys[mid]), alpha, bits) >= j) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    return lo;
  };
  bool converged = false;
  int coarse = 0;  // steps of the coarse phase: at most max_iter - 1, so max_iter bounds both
  // Below kCoarseMin values the exact steps are cheap anyway, and a small tensor's coarse
  // fixed point can be another than the exact alternation from max|x| reaches: skip it.
  while (bk.n >= kCoarseMin && coarse + 1 < max_iter && !converged) {
    ++coarse;
    first_lo[0] = 0;
    first_lo[nlev] = nb;
    for (std::size_t j = 1; j < nlev; ++j) first_lo[j] = first_at_least(bk.kmin, first_lo[j - 1], j);
    for (std::size_t j = 0; j < nlev; ++j) {
      tdx[j] = bk.pdx[first_lo[j + 1]] - bk.pdx[first_lo[j]];
      td[j] = bk.pd[first_lo[j + 1]] - bk.pd[first_lo[j]];
    }
    if (!update(lev, tdx, td, alpha, tol, converged)) break;
  }
  converged = false;
  for (int it = coarse; it < max_iter && !converged; ++it) {
    first_lo[0] = first_hi[0] = 0;
    first_lo[nlev] = first_hi[nlev] = nb;
    for (std::size_t j = 1; j < nlev; ++j) {
      first_lo[j] = first_at_least(bk.kmin, first_lo[j - 1], j);
      first_hi[j] = first_at_least(bk.kmax, first_hi[j - 1], j);
    }
    // Buckets wholly at level j: [first_lo[j], first_hi[j+1]) (empty when that is reversed).
    for (std::size_t j = 0; j < nlev; ++j) {
      const std::size_t a = first_lo[j], b = first_hi[j + 1];
      tdx[j] = a < b ? 0.0 + (bk.pdx[b] - bk.pdx[a]) : 0.0;
      td[j] = a < b ? 0.0 + (bk.pd[b] - bk.pd[a]) : 0.0;
    }
    // Buckets with a step inside: [first_hi[j], first_lo[j]) for each step j, each visited once;
    // any not gathered yet are gathered first, with their neighbours, in one scan.
    bool missing = false;
    for (std::size_t j = 1; j < nlev && !missing; ++j) {
      for (std::size_t m = first_hi[j]; m < first_lo[j] && !missing; ++m) missing = bk.slot[m] == Buckets::kNone;
    }
    if (missing) {
      want.clear();
      std::size_t from = 0;
      for (std::size_t j = 1; j < nlev; ++j) {
        if (first_hi[j] >= first_lo[j]) continue;
        const std::size_t lo = std::max(from, first_hi[j] > kMargin ? first_hi[j] - kMargin : 0);
        const std::size_t hi = std::min(nb, first_lo[j] + kMargin);
        for (std::size_t m = lo; m < hi; ++m) want.push_back(m);
        from = std::max(from, hi);
      }
      bk.gather(want);
    }
    std::size_t done = 0;
    for (std::size_t j = 1; j < nlev; ++j) {
      for (std::size_t m = std::max(first_hi[j], done); m < first_lo[j]; ++m) {
        const Buckets::Item* v = bk.items.data() + bk.slot[m];
        for (std::size_t p = 0; p < bk.cnt[m]; ++p) {
          const double xv = static_cast<double>(v[p].x);
          const double dv = static_cast<double>(v[p].d);
          const std::uint8_t c = nearest(xv, alpha, bits);
          tdx[c] += dv * xv;
          td[c] += dv;
        }
      }
      done = std::max(done, first_lo[j]);
    }
    if (!update(lev, tdx, td, alpha, tol, converged)) break;
  }
  return alpha;
}

}  // namespace

namespace {

void check_laq_args(int bits, int max_iter, double tol) {
  require(bits >= 1 && bits <= 8, "bits must be in 1..8, got " + std::to_string(bits));
  require(max_iter >= 0, "max_iter must be >= 0, got " + std::to_string(max_iter));
  require(std::isfinite(tol), "tol must be finite");
  require(tol >= 0.0, "tol must be >= 0");
}

// One branch-free pass over both inputs on their bit patterns (it vectorises): returns max|x|.
// The error names the first problem in the order x, then d's NaN/Inf, then d <= 0, whatever
// index it is at. For finite floats the order of |v|'s bit pattern, as a signed int, is the
// order of the values, so the largest pattern is max|x| exactly.
double check_inputs(const float* x, const float* d, std::size_t n) {
  std::int32_t top_x = 0, top_d = 0, low_d = 0x7FFFFFFF;
  for (std::size_t i = 0; i < n; ++i) {
    std::int32_t ux, ud;
    std::memcpy(&ux, x + i, 4);
    std::memcpy(&ud, d + i, 4);
    const std::int32_t ax = ux & 0x7FFFFFFF;
    top_x = ax > top_x ? ax : top_x;
    // d > 0 and finite: its pattern is in [1, 0x7F800000); a negative d or -0 has the sign bit,
    // so as a signed int it is <= 0
    top_d = (ud & 0x7FFFFFFF) > top_d ? (ud & 0x7FFFFFFF) : top_d;
    low_d = ud < low_d ? ud : low_d;
  }
  if (top_x >= 0x7F800000) throw NonFinite("x contains NaN or Inf");
  if (top_d >= 0x7F800000) throw NonFinite("d contains NaN or Inf");
  if (n > 0 && low_d <= 0) throw InvalidArgument("d must be > 0 everywhere");
  float m;
  std::memcpy(&m, &top_x, 4);
  return static_cast<double>(m);
}

// The fitted scale (a float32 value) for one width; `bk` is built on first need and kept, so
// several widths over the same tensor share it.
double laq_alpha(const float* x, const float* d, std::size_t n, int bits, int max_iter, double tol,
                 const std::vector<double>& lev, double max_abs, std::unique_ptr<Buckets>& bk) {
  double alpha = max_abs;
  if (alpha > 0.0 && bits == 1) {
    // codes = sign(x) for every alpha > 0, so the alternation's fixed point is closed-form
    double num = 0.0, den = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      double dd = static_cast<double>(d[i]);
      num += dd * std::fabs(static_cast<double>(x[i]));
      den += dd;
    }
    alpha = num / den;
  } else if (alpha > 0.0 && max_iter > 0) {
    if (!bk) bk = std::make_unique<Buckets>(make_buckets(x, d, n));
    alpha = fit_alpha(*bk, bits, lev, alpha, max_iter, tol);
  }
  // The least-squares alpha can exceed max|x| (a value rounded to a small level pulls it up, and
  // the sums round), so near the top of float32 it can pass FLT_MAX: clamp it there, so the
  // receiver's scale is finite and the cast below stays in range.
  constexpr double kMaxAlpha = static_cast<double>(std::numeric_limits<float>::max());
  alpha = alpha > kMaxAlpha ? kMaxAlpha : alpha;
  return static_cast<double>(static_cast<float>(alpha));
}

// Codes for alpha_f (into `packed` unless null) and the weighted error, summed in index order.
double laq_codes(const float* x, const float* d, std::size_t n, int bits, const std::vector<double>& lev,
                 double alpha_f, std::uint8_t* packed) {
  const std::uint8_t zero_code = bits == 1 ? 1 : static_cast<std::uint8_t>(((1 << bits) - 2) / 2);
  // Codes go through an L1-sized staging buffer, packed a block at a time (8 codes per packed
  // group, so every block but the last is a whole number of groups).
  constexpr std::size_t kBlock = 4096;
  std::uint8_t codes[kBlock];
  double err = 0.0;
  for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::size_t m = std::min(kBlock, n - i0);
    for (std::size_t t = 0; t < m; ++t) {
      const std::size_t i = i0 + t;
      double xd = static_cast<double>(x[i]);
      std::uint8_t c = alpha_f > 0.0 ? nearest(xd, alpha_f, bits) : zero_code;
      codes[t] = c;
      double e = xd - static_cast<double>(static_cast<float>(alpha_f * lev[c]));
      err += static_cast<double>(d[i]) * (e * e);
    }
    if (packed != nullptr) pack_bits_unchecked(codes, m, bits, packed + i0 / 8 * static_cast<std::size_t>(bits));
  }
  return err;
}

}  // namespace

LaqResult laq_quantize(const float* x, const float* d, std::size_t n, int bits, int max_iter,
                       double tol, std::uint8_t* packed) {
  check_laq_args(bits, max_iter, tol);
  const double max_abs = check_inputs(x, d, n);
  if (n == 0) return {0.0, 0.0};
  const std::vector<double> lev = levels(bits);
  std::unique_ptr<Buckets> bk;
  const double alpha_f = laq_alpha(x, d, n, bits, max_iter, tol, lev, max_abs, bk);
  const double err = laq_codes(x, d, n, bits, lev, alpha_f, packed);
  return {alpha_f, err};
}

LaqResult laq_quantize_at(const float* x, const float* d, std::size_t n, int bits, double alpha,
                          std::uint8_t* packed) {
  check_laq_args(bits, 0, 0.0);
  require(std::isfinite(alpha) && alpha >= 0.0 && alpha <= static_cast<double>(std::numeric_limits<float>::max()),
          "alpha must be finite, >= 0 and within the float32 range");
  check_inputs(x, d, n);
  if (n == 0) return {0.0, 0.0};
  const std::vector<double> lev = levels(bits);
  const double alpha_f = static_cast<double>(static_cast<float>(alpha));
  return {alpha_f, laq_codes(x, d, n, bits, lev, alpha_f, packed)};
}

void laq_errors(const float* x, const float* d, std::size_t n, const int* widths, std::size_t nw, int max_iter,
                double tol, double* alphas, double* errors) {
  for (std::size_t w = 0; w < nw; ++w) check_laq_args(widths[w] == 0 ? 1 : widths[w], max_iter, tol);
  const double max_abs = check_inputs(x, d, n);
  std::unique_ptr<Buckets> bk;
  for (std::size_t w = 0; w < nw; ++w) {
    if (n == 0) {
      alphas[w] = errors[w] = 0.0;
      continue;
    }
    if (widths[w] == 0) {  // not sent: x_hat = 0
      double err = 0.0;
      for (std::size_t i = 0; i < n; ++i) {
        const double xd = static_cast<double>(x[i]);
        err += static_cast<double>(d[i]) * (xd * xd);
      }
      alphas[w] = 0.0;
      errors[w] = err;
      continue;
    }
    const std::vector<double> lev = levels(widths[w]);
    alphas[w] = laq_alpha(x, d, n, widths[w], max_iter, tol, lev, max_abs, bk);
    errors[w] = laq_codes(x, d, n, widths[w], lev, alphas[w], nullptr);
  }
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
