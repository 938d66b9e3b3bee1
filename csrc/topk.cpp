#include "topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common.hpp"

namespace orbitfl {
namespace {

// NaN/Inf in x or the residual always makes acc non-finite, so one flag over acc detects every
// bad input; only then are the inputs scanned again to name the culprit.
[[noreturn]] void throw_nonfinite(const float* x, const float* r, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) throw NonFinite("x contains NaN or Inf");
  }
  for (std::size_t i = 0; r && i < n; ++i) {
    if (!std::isfinite(r[i])) throw NonFinite("residual contains NaN or Inf");
  }
  throw NonFinite("x + residual overflows float32");
}

}  // namespace

namespace {

// |v| as its bit pattern: for non-negative floats the unsigned order of the bits is the order
// of the values, and +0/-0 both become 0.
inline std::uint32_t mag_bits(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  return u & 0x7FFFFFFFu;
}

// acc[i], recomputed wherever needed (same float add each time) instead of stored: no n-sized
// temporary.
struct Acc {
  const float* x;
  const float* r;
  float operator()(std::size_t i) const { return r ? x[i] + r[i] : x[i]; }
};

}  // namespace

namespace {

constexpr std::uint32_t kTopBins = 1u << 11;

// The 11-bit histogram of |a[i]| over i < n, and whether any a[i] is NaN/Inf. Four interleaved
// histograms: an update's magnitudes crowd into a few bins, and one histogram would make every
// increment wait for the previous one to the same counter (a store-to-load chain), which made
// this pass several times slower than reading the inputs.
template <class Get>
bool histogram_top(Get get, std::size_t n, std::vector<std::size_t>& hist) {
  std::vector<std::uint32_t> h(4 * kTopBins);
  std::uint32_t* h0 = h.data();
  std::uint32_t* h1 = h0 + kTopBins;
  std::uint32_t* h2 = h1 + kTopBins;
  std::uint32_t* h3 = h2 + kTopBins;
  std::uint32_t hi = 0;  // the largest magnitude bits seen: >= 0x7F800000 means NaN/Inf
  std::size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const std::uint32_t u0 = mag_bits(get(i)), u1 = mag_bits(get(i + 1));
    const std::uint32_t u2 = mag_bits(get(i + 2)), u3 = mag_bits(get(i + 3));
    hi = std::max(hi, std::max(std::max(u0, u1), std::max(u2, u3)));
    ++h0[u0 >> 20];  // a NaN's bin is still in range; the caller refuses it
    ++h1[u1 >> 20];
    ++h2[u2 >> 20];
    ++h3[u3 >> 20];
  }
  for (; i < n; ++i) {
    const std::uint32_t u = mag_bits(get(i));
    hi = std::max(hi, u);
    ++h0[u >> 20];
  }
  hist.assign(kTopBins, 0);
  for (std::uint32_t b = 0; b < kTopBins; ++b) hist[b] = std::size_t{h0[b]} + h1[b] + h2[b] + h3[b];
  return hi >= 0x7F800000u;
}

// Radix selection of T = the k-th largest magnitude (0 < k < n) once the 11-bit histogram of
// all n is known: T's top bits come from it, and two 10-bit histograms over the gathered
// entries of T's bin finish T. Selection is exact, so the result equals a full sort with ties to
// the lower index.
class RadixSelect {
 public:
  RadixSelect(std::vector<std::size_t>& hist, std::size_t k) : hist_(hist), need_(k) {
    top_ = descend(kTopBins);
    // (k - need) entries lie above T's bin and hist[top] in it
    gathered_ = k - need_ + hist_[top_];
  }
  std::uint32_t top() const { return top_; }
  std::size_t gathered() const { return gathered_; }
  // gval/gidx: the `gathered` entries whose bin is >= top, in index order. Writes the kept
  // indices and values (ascending) and calls zero(i) at each kept index.
  template <class Zero>
  void finish(const std::uint32_t* gidx, const float* gval, std::uint32_t* idx, float* vals, Zero zero) {
    std::fill(hist_.begin(), hist_.begin() + 1024, 0);
    for (std::size_t t = 0; t < gathered_; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      if ((u >> 20) == top_) ++hist_[(u >> 10) & 1023u];
    }
    const std::uint32_t mid = descend(1024);
    std::fill(hist_.begin(), hist_.begin() + 1024, 0);
    for (std::size_t t = 0; t < gathered_; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      if ((u >> 10) == ((top_ << 10) | mid)) ++hist_[u & 1023u];
    }
    const std::uint32_t low = descend(1024);
    const std::uint32_t thr = (top_ << 20) | (mid << 10) | low;
    // `need` entries equal to thr are taken, in index order
    std::size_t taken = 0;
    for (std::size_t t = 0; t < gathered_; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      const bool keep = u > thr || (u == thr && need_ > 0);
      if (!keep) continue;
      if (u == thr) --need_;
      idx[taken] = gidx[t];
      vals[taken] = gval[t];
      ++taken;
      zero(gidx[t]);
    }
  }

 private:
  std::uint32_t descend(std::uint32_t bins) {
    std::size_t above = 0;
    std::uint32_t b = bins - 1;
    while (above + hist_[b] < need_) above += hist_[b--];
    need_ -= above;
    return b;
  }
  std::vector<std::size_t>& hist_;
  std::size_t need_;  // becomes the rank inside the bin `descend` returns
  std::uint32_t top_ = 0;
  std::size_t gathered_ = 0;
};

// Appends (i, a[i]) for every i in [0, n) whose magnitude bits are >= lim, storing at most cap of
// them; returns how many there are (cap or fewer were stored) and sets `bad` if any a[i] is
// NaN/Inf. Blocks of 16: a block without a candidate (most of them, as ~k of n values are) costs
// one vectorisable scan and no branch per value. `put(i, a)` sees every value (and may store it).
template <class Get, class Put>
std::size_t gather(Get get, Put put, std::size_t n, std::uint32_t lim, std::size_t cap, std::uint32_t* gidx,
                   float* gval, bool& bad) {
  std::size_t c = 0;
  std::size_t i = 0;
  constexpr std::size_t B = 16;
  float a[B];
  std::uint32_t nonfinite = 0;
  auto take = [&](std::size_t at, float v) {
    if (c < cap) {
      gidx[c] = static_cast<std::uint32_t>(at);
      gval[c] = v;
    }
    ++c;
  };
  for (; i + B <= n; i += B) {
    std::uint32_t any = 0;
    for (std::size_t j = 0; j < B; ++j) {
      a[j] = get(i + j);
      put(i + j, a[j]);
      const std::uint32_t u = mag_bits(a[j]);
      any |= static_cast<std::uint32_t>(u >= lim);
      nonfinite |= static_cast<std::uint32_t>(u >= 0x7F800000u);
    }
    if (!any) continue;
    if (c + B <= cap) {
      // Branchless: a candidate's place is written either way and kept by advancing c; a branch
      // per value would mispredict about once per candidate.
      for (std::size_t j = 0; j < B; ++j) {
        gidx[c] = static_cast<std::uint32_t>(i + j);
        gval[c] = a[j];
        c += mag_bits(a[j]) >= lim;
      }
    } else {
      for (std::size_t j = 0; j < B; ++j) {
        if (mag_bits(a[j]) >= lim) take(i + j, a[j]);
      }
    }
  }
  for (; i < n; ++i) {
    const float v = get(i);
    put(i, v);
    nonfinite |= static_cast<std::uint32_t>(mag_bits(v) >= 0x7F800000u);
    if (mag_bits(v) >= lim) take(i, v);
  }
  bad = nonfinite != 0;
  return c;
}

// A guess at the magnitude bits of the k-th largest of n (0 < k < n) from a strided sample of
// 4096: the sample's entry a few standard deviations above rank k·4096/n, so that with high
// probability at least k of the n reach it while only ~1.5 k do. 0 means no useful guess (too few
// values, or k too large a share for one-pass gathering to pay).
template <class Get>
std::uint32_t guess_limit(Get get, std::size_t n, std::size_t k) {
  constexpr std::size_t S = 4096;
  if (n < 16 * S || k > n / 16) return 0;
  const std::size_t stride = n / S;
  std::vector<std::uint32_t> s(S);
  for (std::size_t j = 0; j < S; ++j) s[j] = mag_bits(get(j * stride));
  const double mean = static_cast<double>(k) * S / static_cast<double>(n);
  const auto rank = static_cast<std::size_t>(mean + 4.0 * std::sqrt(mean) + 4.0);
  if (rank >= S) return 0;
  std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(rank), s.end(), std::greater<>());
  return s[rank];
}

// Selection among candidates already gathered (every entry with magnitude bits >= some limit, in
// index order, at least k of them): T >= the limit, so all the entries that reach T are there.
template <class Zero>
void select_gathered(std::uint32_t* gidx, float* gval, std::size_t c, std::size_t k, std::uint32_t* idx,
                     float* vals, Zero zero) {
  std::vector<std::size_t> hist;
  histogram_top([gval](std::size_t t) { return gval[t]; }, c, hist);
  RadixSelect sel(hist, k);
  std::size_t kept = 0;  // keep those in T's bin or above, in index order
  for (std::size_t t = 0; t < c; ++t) {
    gidx[kept] = gidx[t];
    gval[kept] = gval[t];
    kept += (mag_bits(gval[t]) >> 20) >= sel.top();
  }
  sel.finish(gidx, gval, idx, vals, zero);
}

// Capacity of the one-pass gather: about twice the entries expected to reach the guess.
std::size_t gather_cap(std::size_t n, std::size_t k) { return std::min(n, 3 * k + 4096); }

}  // namespace

void topk(const float* x, float* residual, std::size_t n, std::size_t k, std::uint32_t* idx,
          float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  const Acc acc{x, residual};
  // Pass 1 histograms |acc| and checks that it is finite (so x and the residual are) before
  // anything is written; pass 2 writes the residual and gathers the entries whose top bits reach
  // T's (their number is known): those above are kept for sure. The rest touches only the k-odd
  // gathered entries (RadixSelect).
  if (k > 0 && k < n) {
    std::vector<std::size_t> hist;
    if (histogram_top(acc, n, hist)) throw_nonfinite(x, residual, n);
    RadixSelect sel(hist, k);
    std::vector<std::uint32_t> gidx(sel.gathered());
    std::vector<float> gval(sel.gathered());
    const std::uint32_t above = (sel.top() + 1) << 20;  // magnitude bits of a bin above T's
    bool bad = false;
    if (residual) {
      // entries in T's bin keep acc for now; the kept ones among them are zeroed in finish
      gather(
          acc,
          [residual, above](std::size_t i, float a) {
            residual[i] = mag_bits(a) >= above ? 0.0f : a;
          },
          n, sel.top() << 20, sel.gathered(), gidx.data(), gval.data(), bad);
      sel.finish(gidx.data(), gval.data(), idx, vals, [residual](std::uint32_t i) { residual[i] = 0.0f; });
    } else {
      gather(acc, [](std::size_t, float) {}, n, sel.top() << 20, sel.gathered(), gidx.data(), gval.data(), bad);
      sel.finish(gidx.data(), gval.data(), idx, vals, [](std::uint32_t) {});
    }
    return;
  }
  std::uint32_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) bad |= mag_bits(acc(i)) >= 0x7F800000u;
  if (bad) throw_nonfinite(x, residual, n);
  // k == n keeps all, k == 0 none.
  for (std::size_t i = 0; i < n; ++i) {
    const float a = acc(i);
    if (k == n) {
      idx[i] = static_cast<std::uint32_t>(i);
      vals[i] = a;
    }
    if (residual) residual[i] = k == n ? 0.0f : a;
  }
}

namespace {

// The selection behind dgc_select and topk_into, which write their new state into fresh outputs:
// velocity(i) is the value at i, store(i) computes it and writes the output(s) (returning it),
// get(i) reads it back from the output, zero(i) masks a kept index, throw_bad() names what is
// not finite. One pass stores every output and gathers every entry reaching a sampled guess at
// T; when at least k do, only those are looked at again. Otherwise (a rare bad guess, small n or
// large k) the stored values are histogrammed and gathered once more, as topk does.
template <class Velocity, class Store, class Get, class Zero, class Bad>
void select_into(std::size_t n, std::size_t k, Velocity velocity, Store store, Get get, Zero zero, Bad throw_bad,
                 std::uint32_t* idx, float* vals) {
  const std::uint32_t lim = (k > 0 && k < n) ? guess_limit(velocity, n, k) : 0;
  if (lim > 0) {
    const std::size_t cap = gather_cap(n, k);
    std::vector<std::uint32_t> gidx(cap);
    std::vector<float> gval(cap);
    bool bad = false;
    const std::size_t c = gather(
        store, [](std::size_t, float) {}, n, lim, cap, gidx.data(), gval.data(), bad);
    if (bad) throw_bad();
    if (c >= k && c <= cap) {
      select_gathered(gidx.data(), gval.data(), c, k, idx, vals, zero);
      return;
    }
  } else {
    bool bad = false;
    std::uint32_t none = 0;
    gather(store, [](std::size_t, float) {}, n, 0xFFFFFFFFu, 0, &none, nullptr, bad);
    if (bad) throw_bad();
  }
  // The outputs hold the new states (all finite); select on the stored values as topk does.
  if (k == 0) return;
  if (k == n) {
    for (std::size_t i = 0; i < n; ++i) {
      idx[i] = static_cast<std::uint32_t>(i);
      vals[i] = get(i);
      zero(static_cast<std::uint32_t>(i));
    }
    return;
  }
  std::vector<std::size_t> hist;
  histogram_top(get, n, hist);
  RadixSelect sel(hist, k);
  std::vector<std::uint32_t> gidx(sel.gathered());
  std::vector<float> gval(sel.gathered());
  bool bad = false;
  gather(get, [](std::size_t, float) {}, n, sel.top() << 20, sel.gathered(), gidx.data(), gval.data(), bad);
  sel.finish(gidx.data(), gval.data(), idx, vals, zero);
}

}  // namespace

void dgc_select(const float* x, const float* u, const float* v, std::size_t n, float m, std::size_t k,
                float* u_out, float* v_out, std::uint32_t* idx, float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  require(std::isfinite(m) && m >= 0.0f && m <= 1.0f, "m must be in [0, 1], got " + std::to_string(m));
  // The velocity v + (m·u + x), rounded as the NumPy steps round it (-ffp-contract=off: no FMA).
  // It is non-finite iff an input is or the sums overflow, so one flag over it checks them all.
  auto velocity = [x, u, v, m](std::size_t i) {
    float w = u[i] * m;
    w = w + x[i];
    return v[i] + w;
  };
  // Both new states go into the fresh outputs, so a failure leaves the caller's state as it was.
  auto store = [x, u, v, m, u_out, v_out](std::size_t i) {
    float w = u[i] * m;
    w = w + x[i];
    u_out[i] = w;
    const float a = v[i] + w;
    v_out[i] = a;
    return a;
  };
  auto zero = [u_out, v_out](std::uint32_t i) {
    u_out[i] = 0.0f;
    v_out[i] = 0.0f;
  };
  auto throw_bad = [&]() {
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(x[i])) throw NonFinite("x contains NaN or Inf");
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(u[i])) throw NonFinite("momentum contains NaN or Inf");
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(v[i])) throw NonFinite("residual contains NaN or Inf");
    }
    throw NonFinite("the velocity (residual + m * momentum + x) overflows float32");
  };
  select_into(
      n, k, velocity, store, [v_out](std::size_t i) { return v_out[i]; }, zero, throw_bad, idx, vals);
}

void topk_into(const float* x, const float* residual, std::size_t n, std::size_t k, float* r_out,
               std::uint32_t* idx, float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  const Acc acc{x, residual};
  auto store = [acc, r_out](std::size_t i) {
    const float a = acc(i);
    r_out[i] = a;
    return a;
  };
  select_into(
      n, k, acc, store, [r_out](std::size_t i) { return r_out[i]; },
      [r_out](std::uint32_t i) { r_out[i] = 0.0f; }, [&]() { throw_nonfinite(x, residual, n); }, idx, vals);
}

namespace {

std::size_t varint_len(std::uint64_t v) {
  std::size_t len = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++len;
  }
  return len;
}

}  // namespace

std::size_t delta_encoded_size(const std::uint32_t* idx, std::size_t k) {
  std::size_t total = 0;
  std::int64_t prev = -1;
  for (std::size_t i = 0; i < k; ++i) {
    const std::int64_t cur = idx[i];
    require(cur > prev, "indices must be strictly ascending");
    total += varint_len(static_cast<std::uint64_t>(cur - prev));
    prev = cur;
  }
  return total;
}

void delta_encode_indices(const std::uint32_t* idx, std::size_t k, std::uint8_t* out) {
  std::int64_t prev = -1;
  for (std::size_t i = 0; i < k; ++i) {
    auto gap = static_cast<std::uint64_t>(static_cast<std::int64_t>(idx[i]) - prev);
    prev = idx[i];
    while (gap >= 0x80) {
      *out++ = static_cast<std::uint8_t>((gap & 0x7F) | 0x80);
      gap >>= 7;
    }
    *out++ = static_cast<std::uint8_t>(gap);
  }
}

void delta_decode_indices(const std::uint8_t* buf, std::size_t len, std::size_t k, std::uint32_t* out) {
  // Check the framing first, so a truncated or overlong buffer is named as such.
  std::size_t ends = 0, used = 0;
  for (std::size_t p = 0; p < len && ends < k; ++p) {
    if (buf[p] < 0x80) {
      ++ends;
      used = p + 1;
    }
  }
  if (ends < k) {
    std::size_t complete = ends;
    throw InvalidArgument("buf is truncated: " + std::to_string(complete) + " complete varints, " +
                          std::to_string(k) + " expected");
  }
  require(used == len, "buf is overlong: " + std::to_string(len - used) + " bytes after " +
                           std::to_string(k) + " varints");
  std::size_t p = 0;
  std::int64_t prev = -1;
  for (std::size_t i = 0; i < k; ++i) {
    std::uint64_t gap = 0;
    std::size_t n_bytes = 0;
    std::uint8_t b;
    do {
      b = buf[p++];
      ++n_bytes;
      require(n_bytes <= 5, "buf holds a varint longer than 5 bytes");
      gap |= static_cast<std::uint64_t>(b & 0x7F) << (7 * (n_bytes - 1));
    } while (b & 0x80);
    require(!(n_bytes > 1 && b == 0), "buf holds a non-canonical varint (trailing zero group)");
    require(gap != 0, "buf holds a zero gap: indices must be strictly ascending");
    const std::int64_t cur = prev + static_cast<std::int64_t>(gap);
    require(cur <= 0xFFFFFFFFll, "buf decodes to an index beyond uint32");
    out[i] = static_cast<std::uint32_t>(cur);
    prev = cur;
  }
}

namespace {

void check_rice_param(unsigned b) {
  require(b <= kRiceMaxParam,
          "b must be in 0.." + std::to_string(kRiceMaxParam) + ", got " + std::to_string(b));
}

void check_ascending(const std::uint32_t* idx, std::size_t k) {
  for (std::size_t i = 1; i < k; ++i) require(idx[i] > idx[i - 1], "indices must be strictly ascending");
}

// Appends up to 57 bits LSB-first; whole bytes leave as soon as they are complete.
struct BitWriter {
  std::uint8_t* out;
  std::uint64_t acc = 0;
  unsigned nbits = 0;
  void put(std::uint64_t value, unsigned len) {
    acc |= value << nbits;
    nbits += len;
    while (nbits >= 8) {
      *out++ = static_cast<std::uint8_t>(acc);
      acc >>= 8;
      nbits -= 8;
    }
  }
  void finish() {
    if (nbits) *out++ = static_cast<std::uint8_t>(acc);
  }
};

}  // namespace

unsigned rice_best_param(const std::uint32_t* idx, std::size_t k) {
  check_ascending(idx, k);
  if (k == 0) return 0;
  // cost(b) = k (b + 1) + sum (v >> b), one plain (vectorisable) pass over the k gaps per b.
  // cost(b + 1) - cost(b) = k - sum ceil((v >> b) / 2) never decreases as b grows, so cost is
  // convex: the first b whose successor is no cheaper is the smallest minimiser, and the search
  // stops there after about b + 2 passes (exact, where the mean-gap estimate can be one off).
  auto cost = [idx, k](unsigned b) {
    std::uint64_t q = static_cast<std::uint64_t>(idx[0]) >> b;  // v0 = idx[0] + 1 - 1
    for (std::size_t i = 1; i < k; ++i) q += (idx[i] - idx[i - 1] - 1u) >> b;
    return q + static_cast<std::uint64_t>(k) * (b + 1);
  };
  unsigned b = 0;
  std::uint64_t here = cost(0);
  while (b < kRiceMaxParam) {
    const std::uint64_t next = cost(b + 1);
    if (next >= here) break;
    here = next;
    ++b;
  }
  return b;
}

std::size_t rice_encoded_size(const std::uint32_t* idx, std::size_t k, unsigned b) {
  check_rice_param(b);
  check_ascending(idx, k);
  std::uint64_t bits = static_cast<std::uint64_t>(k) * (b + 1);
  if (k) bits += static_cast<std::uint64_t>(idx[0]) >> b;
  for (std::size_t i = 1; i < k; ++i) bits += (idx[i] - idx[i - 1] - 1u) >> b;
  return static_cast<std::size_t>((bits + 7) / 8);
}

void rice_encode_indices(const std::uint32_t* idx, std::size_t k, unsigned b, std::uint8_t* out) {
  BitWriter w{out};
  std::uint32_t prev_plus1 = 0;  // idx[i-1] + 1, so v = idx[i] - prev_plus1 cannot overflow
  for (std::size_t i = 0; i < k; ++i) {
    const std::uint32_t v = idx[i] - prev_plus1;
    prev_plus1 = idx[i] + 1u;  // wraps only after the last possible index, never read again
    std::uint64_t q = v >> b;
    for (; q >= 32; q -= 32) w.put(0, 32);
    const std::uint64_t low = v & ((std::uint64_t{1} << b) - 1);
    w.put(0, static_cast<unsigned>(q));
    w.put(1u | (low << 1), b + 1);
  }
  w.finish();
}

void rice_decode_indices(const std::uint8_t* buf, std::size_t len, std::size_t k, unsigned b,
                         std::uint32_t* out) {
  check_rice_param(b);
  const std::uint64_t total = static_cast<std::uint64_t>(len) * 8;
  const std::uint64_t max_q = 0xFFFFFFFFull >> b;  // (q << b) | low must stay below 2**32
  std::uint64_t pos = 0;  // next bit to read
  std::int64_t prev = -1;
  for (std::size_t i = 0; i < k; ++i) {
    // The unary part: zeros up to the next one bit, a byte at a time.
    const std::uint64_t start = pos;
    std::size_t byte = static_cast<std::size_t>(pos >> 3);
    unsigned cur = byte < len ? static_cast<unsigned>(buf[byte] >> (pos & 7)) : 0u;
    if (cur == 0) {
      ++byte;
      while (byte < len && buf[byte] == 0) ++byte;
      if (byte >= len) {
        throw InvalidArgument("buf is truncated: " + std::to_string(i) + " complete codes, " +
                              std::to_string(k) + " expected");
      }
      pos = static_cast<std::uint64_t>(byte) * 8;
      cur = buf[byte];
    }
    pos += static_cast<unsigned>(__builtin_ctz(cur));
    const std::uint64_t q = pos - start;
    require(q <= max_q, "buf decodes to a gap beyond uint32");
    ++pos;  // the one bit
    std::uint64_t low = 0;
    if (b) {
      if (pos + b > total) {
        throw InvalidArgument("buf is truncated: " + std::to_string(i) + " complete codes, " +
                              std::to_string(k) + " expected");
      }
      // b <= 31 bits starting at bit pos & 7 lie within 5 bytes, all inside buf (checked above).
      const std::size_t first = static_cast<std::size_t>(pos >> 3);
      const std::size_t last = static_cast<std::size_t>((pos + b - 1) >> 3);
      std::uint64_t window = 0;
      for (std::size_t j = first; j <= last; ++j) window |= static_cast<std::uint64_t>(buf[j]) << (8 * (j - first));
      low = (window >> (pos & 7)) & ((std::uint64_t{1} << b) - 1);
      pos += b;
    }
    const std::int64_t cur_idx = prev + 1 + static_cast<std::int64_t>((q << b) | low);
    require(cur_idx <= 0xFFFFFFFFll, "buf decodes to an index beyond uint32");
    out[i] = static_cast<std::uint32_t>(cur_idx);
    prev = cur_idx;
  }
  const std::uint64_t used = (pos + 7) / 8;
  require(used == len, "buf is overlong: " + std::to_string(len - used) + " bytes after " +
                           std::to_string(k) + " codes");
  require((pos & 7) == 0 || (buf[len - 1] >> (pos & 7)) == 0,
          "buf has nonzero padding bits after the last code");
}

}  // namespace orbitfl
