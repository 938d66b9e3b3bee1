#include "topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "common.hpp"
#include "simd.hpp"

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

// Four float lanes for the one-pass loops below: SSE2, NEON or plain arrays, the same IEEE
// single-precision mul and add in every lane as the scalar code (no FMA), so every path gives the
// scalar bits. Magnitude bits compare as signed int32 (they are at most 0x7FFFFFFF), which SSE2
// has and NEON matches.
namespace v4 {
#if defined(ORBITFL_SSE2)
using F = __m128;
using M = __m128i;
inline F load(const float* p) { return _mm_loadu_ps(p); }
inline void store(float* p, F a) { _mm_storeu_ps(p, a); }
// A non-temporal store (p 16-byte aligned): the line goes to memory without first being read in.
inline void stream(float* p, F a) { _mm_stream_ps(p, a); }
// Orders the non-temporal stores before any later store (other threads see them in order).
inline void fence() { _mm_sfence(); }
constexpr bool kHasStream = true;
inline F splat(float a) { return _mm_set1_ps(a); }
inline F add(F a, F b) { return _mm_add_ps(a, b); }
inline F mul(F a, F b) { return _mm_mul_ps(a, b); }
inline M splat_i(std::int32_t a) { return _mm_set1_epi32(a); }
inline M mag(F a) { return _mm_and_si128(_mm_castps_si128(a), _mm_set1_epi32(0x7FFFFFFF)); }
inline M gt(M a, M b) { return _mm_cmpgt_epi32(a, b); }
inline M lor(M a, M b) { return _mm_or_si128(a, b); }
inline F clear(F a, M m) { return _mm_andnot_ps(_mm_castsi128_ps(m), a); }  // +0.0 where m
inline bool any(M m) { return _mm_movemask_ps(_mm_castsi128_ps(m)) != 0; }
inline unsigned lanes(M m) { return static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(m))); }
#elif defined(ORBITFL_NEON)
using F = float32x4_t;
using M = uint32x4_t;
inline F load(const float* p) { return vld1q_f32(p); }
inline void store(float* p, F a) { vst1q_f32(p, a); }
// NEON keeps normal stores: Cortex-A cores notice full lines written in sequence and skip the
// allocate read themselves (write streaming).
inline void stream(float* p, F a) { vst1q_f32(p, a); }
inline void fence() {}
constexpr bool kHasStream = false;
inline F splat(float a) { return vdupq_n_f32(a); }
inline F add(F a, F b) { return vaddq_f32(a, b); }
inline F mul(F a, F b) { return vmulq_f32(a, b); }
inline M splat_i(std::int32_t a) { return vreinterpretq_u32_s32(vdupq_n_s32(a)); }
inline M mag(F a) { return vandq_u32(vreinterpretq_u32_f32(a), vdupq_n_u32(0x7FFFFFFFu)); }
inline M gt(M a, M b) { return vcgtq_s32(vreinterpretq_s32_u32(a), vreinterpretq_s32_u32(b)); }
inline M lor(M a, M b) { return vorrq_u32(a, b); }
inline F clear(F a, M m) { return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(a), m)); }
inline bool any(M m) { return vmaxvq_u32(m) != 0; }
inline unsigned lanes(M m) {
  static const std::uint32_t w[4] = {1, 2, 4, 8};
  return vaddvq_u32(vandq_u32(m, vld1q_u32(w)));
}
#else
struct F {
  float f[4];
};
struct M {
  std::uint32_t u[4];
};
inline F load(const float* p) { return {{p[0], p[1], p[2], p[3]}}; }
inline void store(float* p, F a) { std::memcpy(p, a.f, 16); }
inline void stream(float* p, F a) { std::memcpy(p, a.f, 16); }
inline void fence() {}
constexpr bool kHasStream = false;
inline F splat(float a) { return {{a, a, a, a}}; }
inline F add(F a, F b) { return {{a.f[0] + b.f[0], a.f[1] + b.f[1], a.f[2] + b.f[2], a.f[3] + b.f[3]}}; }
inline F mul(F a, F b) { return {{a.f[0] * b.f[0], a.f[1] * b.f[1], a.f[2] * b.f[2], a.f[3] * b.f[3]}}; }
inline M splat_i(std::int32_t a) {
  const auto u = static_cast<std::uint32_t>(a);
  return {{u, u, u, u}};
}
inline M mag(F a) {
  M m;
  for (int j = 0; j < 4; ++j) m.u[j] = mag_bits(a.f[j]);
  return m;
}
inline M gt(M a, M b) {
  M m;
  for (int j = 0; j < 4; ++j) {
    m.u[j] = static_cast<std::int32_t>(a.u[j]) > static_cast<std::int32_t>(b.u[j]) ? 0xFFFFFFFFu : 0u;
  }
  return m;
}
inline M lor(M a, M b) { return {{a.u[0] | b.u[0], a.u[1] | b.u[1], a.u[2] | b.u[2], a.u[3] | b.u[3]}}; }
inline F clear(F a, M m) {
  for (int j = 0; j < 4; ++j) {
    if (m.u[j]) a.f[j] = 0.0f;
  }
  return a;
}
inline unsigned lanes(M m) {
  return (m.u[0] & 1u) | (m.u[1] & 2u) | (m.u[2] & 4u) | (m.u[3] & 8u);
}
inline bool any(M m) { return lanes(m) != 0; }
#endif

// The signed bound t with (magnitude bits > t) == (magnitude bits >= lim) for every lim: lim 0
// takes all (t = -1), lim above 0x80000000 none (t = 0x7FFFFFFF).
inline M at_least(std::uint32_t lim) {
  const std::uint32_t t = std::min(lim, 0x80000000u) - 1u;
  std::int32_t s;
  std::memcpy(&s, &t, 4);
  return splat_i(s);
}

}  // namespace v4

}  // namespace

namespace {

constexpr std::uint32_t kTopBins = 1u << 11;
constexpr std::uint32_t kNone = 0xFFFFFFFFu;  // a magnitude bound no value reaches

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

// T's magnitude bits and how many of the entries equal to T are kept.
struct Cut {
  std::uint32_t thr;
  std::size_t need;
};

// Radix selection of T = the k-th largest magnitude (0 < k < n) once the 11-bit histogram of
// all n is known: T's top bits come from it, and two 10-bit histograms over the entries of T's
// bin (among candidates that include every entry reaching T) finish T. Selection is exact, so the
// result equals a full sort with ties to the lower index.
class RadixSelect {
 public:
  RadixSelect(std::vector<std::size_t>& hist, std::size_t k) : hist_(hist), need_(k) {
    top_ = descend(kTopBins);
    // (k - need) entries lie above T's bin and hist[top] in it
    gathered_ = k - need_ + hist_[top_];
  }
  std::uint32_t top() const { return top_; }
  // How many entries are in T's bin or above.
  std::size_t gathered() const { return gathered_; }
  // T's magnitude bits from the c candidates' values, and how many entries equal to T are kept
  // (the first ones in index order). Entries outside T's bin go to spare counters
  // instead of a branch (they come in no order a predictor learns), eight in turn: one would
  // chain most increments through memory.
  Cut cut(const float* gval, std::size_t c) {
    std::fill(hist_.begin(), hist_.begin() + 1024 + kSpare, 0);
    for (std::size_t t = 0; t < c; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      ++hist_[pick((u >> 20) == top_, (u >> 10) & 1023u, 1024u + (t & (kSpare - 1)))];
    }
    const std::uint32_t mid = descend(1024);
    std::fill(hist_.begin(), hist_.begin() + 1024 + kSpare, 0);
    const std::uint32_t top_mid = (top_ << 10) | mid;
    for (std::size_t t = 0; t < c; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      ++hist_[pick((u >> 10) == top_mid, u & 1023u, 1024u + (t & (kSpare - 1)))];
    }
    const std::uint32_t low = descend(1024);
    return {(top_ << 20) | (mid << 10) | low, need_};
  }

 private:
  // a if c else b, by masks: GCC compiled the ternary to a branch.
  static std::size_t pick(bool c, std::size_t a, std::size_t b) {
    const std::size_t m = 0 - static_cast<std::size_t>(c);
    return (a & m) | (b & ~m);
  }
  std::uint32_t descend(std::uint32_t bins) {
    std::size_t above = 0;
    std::uint32_t b = bins - 1;
    while (above + hist_[b] < need_) above += hist_[b--];
    need_ -= above;
    return b;
  }
  static constexpr std::size_t kSpare = 8;
  std::vector<std::size_t>& hist_;  // kTopBins >= 1024 + kSpare counters
  std::size_t need_;                // becomes the rank inside the bin `descend` returns
  std::uint32_t top_ = 0;
  std::size_t gathered_ = 0;
};

// Uninitialised scratch: zero-filling the gather buffers (up to ~9 % of n entries each) cost a
// pass of its own.
template <class T>
std::unique_ptr<T[]> scratch(std::size_t n) {
  return std::unique_ptr<T[]>(new T[n]);
}

// The candidates of one gather: index and value of each, in index order. Before zero_end the pass already wrote 0 to the outputs of every entry reaching `mid`
// (all of them candidates); the rest of the outputs hold the values.
struct Gathered {
  std::uint32_t* idx;
  float* val;
  std::size_t count = 0;
  std::uint32_t mid = kNone;
  std::size_t zero_end = 0;
  bool zeroed(std::size_t t) const { return idx[t] < zero_end && mag_bits(val[t]) >= mid; }
};

// One pass over [0, n): src.step4(i, zt) computes the values a[i..i+4), stores them (and any
// other state) with 0 in the lanes whose magnitude bits exceed zt, and returns a. Every
// entry whose magnitude bits are >= lim is appended to g (at most cap of them; g.count says how
// many there are, so more than cap means some were not stored); `bad` is set if any value is
// NaN/Inf. A block of 16 is four vector steps, two compares per vector (candidate, non-finite)
// and one branch; a block with a candidate walks its mask's set bits. Zeroing (entries >= mid)
// stops at the first block that might not fit in cap, so every zeroed entry is in g. src is a
// copy: the compiler then knows that the stores through its pointers do not change them.
template <class Src>
void gather(const Src src, std::size_t n, std::uint32_t lim, std::uint32_t mid, std::size_t cap, Gathered& g,
            bool& bad) {
  const v4::M t = v4::at_least(lim);
  v4::M zt = v4::at_least(mid);
  const v4::M finite_max = v4::splat_i(0x7F7FFFFF);
  v4::M nonfinite = v4::splat_i(0);
  std::uint32_t* __restrict gidx = g.idx;
  float* __restrict gval = g.val;
  std::size_t c = 0;
  std::size_t i = 0;
  g.mid = mid;
  g.zero_end = mid == kNone ? 0 : n;
  // Four vector steps: the values go to dst (L1, whether or not one is a candidate) and the
  // candidates' lanes to the returned 16 bits.
  auto block16 = [&](std::size_t at, float* dst) -> std::uint64_t {
    const v4::F a0 = src.step4(at, zt), a1 = src.step4(at + 4, zt);
    const v4::F a2 = src.step4(at + 8, zt), a3 = src.step4(at + 12, zt);
    const v4::M m0 = v4::mag(a0), m1 = v4::mag(a1), m2 = v4::mag(a2), m3 = v4::mag(a3);
    nonfinite = v4::lor(nonfinite, v4::lor(v4::lor(v4::gt(m0, finite_max), v4::gt(m1, finite_max)),
                                           v4::lor(v4::gt(m2, finite_max), v4::gt(m3, finite_max))));
    const v4::M c0 = v4::gt(m0, t), c1 = v4::gt(m1, t), c2 = v4::gt(m2, t), c3 = v4::gt(m3, t);
    v4::store(dst, a0);
    v4::store(dst + 4, a1);
    v4::store(dst + 8, a2);
    v4::store(dst + 12, a3);
    return v4::lanes(c0) | (v4::lanes(c1) << 4) | (v4::lanes(c2) << 8) | (v4::lanes(c3) << 12);
  };
  alignas(16) float a[64];
  // Appends the candidates whose bits are set (values in a, indices from `at`).
  auto walk = [&](std::uint64_t bits, std::size_t at, std::size_t len) {
    if (c + len <= cap) {
      do {
        const auto j = static_cast<unsigned>(__builtin_ctzll(bits));
        gidx[c] = static_cast<std::uint32_t>(at + j);
        gval[c] = a[j];
        ++c;
        bits &= bits - 1;
      } while (bits);
    } else {
      for (; bits; bits &= bits - 1, ++c) {
        const auto j = static_cast<unsigned>(__builtin_ctzll(bits));
        if (c < cap) {
          gidx[c] = static_cast<std::uint32_t>(at + j);
          gval[c] = a[j];
        }
      }
    }
  };
  // One branch per 64 values, not per 16: at 3 % kept about two blocks of 16 in five hold a
  // candidate, in no order a predictor learns (that branch, and the walk's exit, mispredicted on
  // about half the blocks), while nine blocks of 64 in ten hold one. The values are stored to `a`
  // either way: a few stores to L1 cost less than keeping 16 vectors live across the branch.
  for (; i + 64 <= n; i += 64) {
    if (c + 64 > cap && g.zero_end == n) {
      zt = v4::at_least(kNone);
      g.zero_end = i;
    }
    const std::uint64_t bits = block16(i, a) | (block16(i + 16, a + 16) << 16) |
                               (block16(i + 32, a + 32) << 32) | (block16(i + 48, a + 48) << 48);
    if (bits) walk(bits, i, 64);
  }
  for (; i + 16 <= n; i += 16) {
    if (c + 16 > cap && g.zero_end == n) {
      zt = v4::at_least(kNone);
      g.zero_end = i;
    }
    const std::uint64_t bits = block16(i, a);
    if (bits) walk(bits, i, 16);
  }
  g.zero_end = std::min(g.zero_end, i);  // the tail is stored as is
  std::uint32_t tail_bad = 0;
  for (; i < n; ++i) {
    const float v = src.step(i);
    const std::uint32_t u = mag_bits(v);
    tail_bad |= static_cast<std::uint32_t>(u >= 0x7F800000u);
    if (u >= lim) {
      if (c < cap) {
        gidx[c] = static_cast<std::uint32_t>(i);
        gval[c] = v;
      }
      ++c;
    }
  }
  g.count = c;
  bad = v4::any(nonfinite) || tail_bad != 0;
}

// Makes the listed entries of g agree with the selection: zeroed ones were not kept (their
// values come back), the others were kept (they become 0).
template <class Src>
void apply_fixes(const Src& src, const Gathered& g, const std::uint32_t* fix, std::size_t f) {
  constexpr std::size_t kAhead = 16;
  for (std::size_t j = 0; j < std::min(f, kAhead); ++j) src.prefetch(g.idx[fix[j]]);
  for (std::size_t j = 0; j < f; ++j) {
    if (j + kAhead < f) src.prefetch(g.idx[fix[j + kAhead]]);
    const std::uint32_t t = fix[j];
    if (g.zeroed(t)) {
      src.restore(g.idx[t], g.val[t]);
    } else {
      src.zero(g.idx[t]);
    }
  }
}

// Takes the k entries of g that reach thr (the first `need` of those equal to it), in index
// order, into idx and vals, and makes the outputs agree: a kept entry the pass did not zero is
// zeroed, a zeroed one not kept gets its values back. Only entries near T need either; those
// writes land anywhere in the outputs, a cache miss each, so they are listed first and then made
// with the lines a few fixes ahead already requested (one at a time, each waited for its miss).
template <class Src>
void take(const Src& src, const Gathered& g, Cut cut, std::size_t k, std::uint32_t* idx, float* vals) {
  const std::uint32_t thr = cut.thr;
  std::size_t need = cut.need;
  auto fix = scratch<std::uint32_t>(g.count);
  std::size_t taken = 0, t = 0, f = 0;
  // Branch-free: each entry is written at the next place and kept by advancing `taken`; exactly
  // k are kept, and idx holds k, so this part stops at the k-th.
  for (; t < g.count && taken < k; ++t) {
    const std::uint32_t u = mag_bits(g.val[t]);
    const bool tie = u == thr && need > 0;
    const bool kept = u > thr || tie;
    idx[taken] = g.idx[t];
    vals[taken] = g.val[t];
    need -= tie;
    taken += kept;
    fix[f] = static_cast<std::uint32_t>(t);
    f += kept != g.zeroed(t);
  }
  for (; t < g.count; ++t) {
    fix[f] = static_cast<std::uint32_t>(t);
    f += g.zeroed(t);
  }
  apply_fixes(src, g, fix.get(), f);
}

// Gives back the values of the entries the pass zeroed (before a fallback reads the outputs).
template <class Src>
void restore_all(const Src& src, const Gathered& g) {
  auto fix = scratch<std::uint32_t>(g.count);
  std::size_t f = 0;
  for (std::size_t t = 0; t < g.count; ++t) {
    fix[f] = static_cast<std::uint32_t>(t);
    f += g.zeroed(t);
  }
  apply_fixes(src, g, fix.get(), f);
}

// Sources for gather. Inputs and outputs never alias (the bindings allocate the outputs), which
// __restrict tells the compiler for the scalar tail.

// acc = x + residual (x alone without one), only read.
template <bool kRes>
struct AccSrc {
  const float* __restrict x;
  const float* __restrict r;
  v4::F step4(std::size_t i, const v4::M&) const {
    return kRes ? v4::add(v4::load(x + i), v4::load(r + i)) : v4::load(x + i);
  }
  float step(std::size_t i) const { return kRes ? x[i] + r[i] : x[i]; }
  void zero(std::uint32_t) const {}
  void restore(std::uint32_t, float) const {}
  void prefetch(std::uint32_t) const {}
};

// topk's second pass: the residual (read as acc's second term, then overwritten at the same
// place) becomes acc, 0 where zeroed.
struct InPlaceSrc {
  const float* x;
  float* r;
  v4::F step4(std::size_t i, const v4::M& zt) const {
    const v4::F a = v4::add(v4::load(x + i), v4::load(r + i));
    v4::store(r + i, v4::clear(a, v4::gt(v4::mag(a), zt)));
    return a;
  }
  float step(std::size_t i) const {
    const float a = x[i] + r[i];
    r[i] = a;
    return a;
  }
  void zero(std::uint32_t i) const { r[i] = 0.0f; }
  void restore(std::uint32_t i, float a) const { r[i] = a; }
  void prefetch(std::uint32_t i) const { __builtin_prefetch(r + i, 1); }
};

// A stored output read back.
struct ReadSrc {
  const float* __restrict out;
  v4::F step4(std::size_t i, const v4::M&) const { return v4::load(out + i); }
  float step(std::size_t i) const { return out[i]; }
};

// How the sources below write their outputs: plain stores, or non-temporal ones with kStream
// (see stream_outputs), which need the fence before anything reads them.
template <bool kStream>
struct Stores {
  static void put(float* p, v4::F a) {
    if constexpr (kStream) {
      v4::stream(p, a);
    } else {
      v4::store(p, a);
    }
  }
  void finish() const {
    if constexpr (kStream) v4::fence();
  }
};

// topk_into: acc written to r_out (by non-temporal stores with kStream: see stream_outputs).
template <bool kRes, bool kStream = false>
struct AccIntoSrc : Stores<kStream> {
  using Stores<kStream>::put;
  const float* __restrict x;
  const float* __restrict r;
  float* __restrict r_out;
  float at(std::size_t i) const { return kRes ? x[i] + r[i] : x[i]; }
  v4::F step4(std::size_t i, const v4::M& zt) const {
    const v4::F a = kRes ? v4::add(v4::load(x + i), v4::load(r + i)) : v4::load(x + i);
    put(r_out + i, v4::clear(a, v4::gt(v4::mag(a), zt)));
    return a;
  }
  float step(std::size_t i) const {
    const float a = at(i);
    r_out[i] = a;
    return a;
  }
  const float* out() const { return r_out; }
  void zero(std::uint32_t i) const { r_out[i] = 0.0f; }
  void restore(std::uint32_t i, float a) const { r_out[i] = a; }
  void prefetch(std::uint32_t i) const { __builtin_prefetch(r_out + i, 1); }
};

// dgc_select: u' = m·u + x to u_out, v' = v + u' to v_out; the velocity v' is the value. The
// same float steps as the NumPy twin (multiply, add, add; -ffp-contract=off:
// no FMA). With kStream the pass writes both by non-temporal stores (see stream_outputs).
template <bool kStream = false>
struct DgcSrc : Stores<kStream> {
  using Stores<kStream>::put;
  const float* __restrict x;
  const float* __restrict u;
  const float* __restrict v;
  float m;
  float* __restrict u_out;
  float* __restrict v_out;
  float at(std::size_t i) const {
    float w = u[i] * m;
    w = w + x[i];
    return v[i] + w;
  }
  v4::F step4(std::size_t i, const v4::M& zt) const {
    const v4::F w = v4::add(v4::mul(v4::load(u + i), v4::splat(m)), v4::load(x + i));
    const v4::F a = v4::add(v4::load(v + i), w);
    const v4::M z = v4::gt(v4::mag(a), zt);
    put(u_out + i, v4::clear(w, z));
    put(v_out + i, v4::clear(a, z));
    return a;
  }
  float step(std::size_t i) const {
    float w = u[i] * m;
    w = w + x[i];
    u_out[i] = w;
    const float a = v[i] + w;
    v_out[i] = a;
    return a;
  }
  const float* out() const { return v_out; }
  void zero(std::uint32_t i) const {
    u_out[i] = 0.0f;
    v_out[i] = 0.0f;
  }
  // u' recomputed (the same float steps): the gather keeps only v'.
  void restore(std::uint32_t i, float a) const {
    float w = u[i] * m;
    w = w + x[i];
    u_out[i] = w;
    v_out[i] = a;
  }
  void prefetch(std::uint32_t i) const {
    __builtin_prefetch(u_out + i, 1);
    __builtin_prefetch(v_out + i, 1);
  }
};

// Guesses at the magnitude bits of T, the k-th largest of n (0 < k < n), from a strided sample
// of 4096: `lim`, the sample's entry a few standard deviations above rank k·4096/n, so that with
// high probability at least k of the n reach it while only a few per cent more do, and `mid`,
// the entry at that rank, the best guess at T itself. lim = 0 means no useful guess (too few
// values, or k so large a share that the guess would keep nearly all). `expect` receives the
// number of the n expected to reach lim.
struct Guess {
  std::uint32_t lim = 0;
  std::uint32_t mid = kNone;
  std::size_t expect = 0;
};

template <class Src>
Guess guess_limit(const Src& src, std::size_t n, std::size_t k) {
  constexpr std::size_t S = 4096;
  Guess g;
  if (n < 16 * S || k > n / 2) return g;
  const std::size_t stride = n / S;
  std::uint32_t s[S];
  for (std::size_t j = 0; j < S; ++j) s[j] = mag_bits(src.at(j * stride));
  const double mean = static_cast<double>(k) * S / static_cast<double>(n);
  const auto rank = static_cast<std::size_t>(mean + 4.0 * std::sqrt(mean) + 4.0);
  if (rank >= S) return g;
  std::nth_element(s, s + rank, s + S, std::greater<>());
  const auto at_t = std::min(rank, static_cast<std::size_t>(mean));
  std::nth_element(s, s + at_t, s + rank, std::greater<>());  // s[0..rank) >= s[rank]
  g.lim = s[rank];
  g.mid = at_t < rank ? s[at_t] : s[rank];
  g.expect = static_cast<std::size_t>(static_cast<double>(rank + 1) * static_cast<double>(n) / S);
  return g;
}

// Selection among candidates already gathered (every entry with magnitude bits >= some limit, in
// index order, at least k of them): T >= the limit, so all the entries that reach T are there.
template <class Src>
void select_gathered(const Src& src, const Gathered& g, std::size_t k, std::uint32_t* idx, float* vals) {
  std::vector<std::size_t> hist;
  const float* gval = g.val;
  histogram_top([gval](std::size_t t) { return gval[t]; }, g.count, hist);
  RadixSelect sel(hist, k);
  take(src, g, sel.cut(g.val, g.count), k, idx, vals);
}

// Capacity of the one-pass gather: 1.5 times the entries expected to reach the guess (their
// count strays by a few per cent from the expectation: the sample's rank is 4 standard deviations
// above k's already), plus 4096 for small k. A tighter buffer is fewer fresh pages to fault in;
// an overflow only costs the fallback.
std::size_t gather_cap(std::size_t n, std::size_t expect) { return std::min(n, expect + expect / 2 + 4096); }

}  // namespace

void topk(const float* x, float* residual, std::size_t n, std::size_t k, std::uint32_t* idx,
          float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  const Acc acc{x, residual};
  // Pass 1 histograms |acc| and checks that it is finite (so x and the residual are) before
  // anything is written; pass 2 writes the residual (0 above T's bin: kept for sure) and gathers
  // the entries whose top bits reach T's (their number is known). The rest touches only the
  // k-odd gathered entries (RadixSelect).
  if (k > 0 && k < n) {
    std::vector<std::size_t> hist;
    if (histogram_top(acc, n, hist)) throw_nonfinite(x, residual, n);
    RadixSelect sel(hist, k);
    const std::size_t cap = sel.gathered();
    auto gidx = scratch<std::uint32_t>(cap);
    auto gval = scratch<float>(cap);
    Gathered g{gidx.get(), gval.get()};
    bool bad = false;
    if (residual) {
      const InPlaceSrc src{x, residual};
      gather(src, n, sel.top() << 20, (sel.top() + 1) << 20, cap, g, bad);
      take(src, g, sel.cut(g.val, g.count), k, idx, vals);
    } else {
      const AccSrc<false> src{x, nullptr};
      gather(src, n, sel.top() << 20, kNone, cap, g, bad);
      take(src, g, sel.cut(g.val, g.count), k, idx, vals);
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

// A source whose outputs already hold every value (the fallback's second gather): a kept entry
// is zeroed and nothing was zeroed before.
template <class Src>
struct InPlace {
  const Src& src;
  void zero(std::uint32_t i) const { src.zero(i); }
  void restore(std::uint32_t, float) const {}
  void prefetch(std::uint32_t i) const { src.prefetch(i); }
};

// The selection behind dgc_select and topk_into, which write their new state into fresh outputs
// through src (see DgcSrc: at(i) is the value at i, computed without storing; step4/step compute,
// store and return it; out() holds the stored values; zero/restore fix single entries);
// throw_bad() names what is not finite. One pass stores every output and gathers every entry
// reaching a sampled guess at T, zeroing already those reaching the best guess at T; when at
// least k reach the guess, only those are looked at again. Otherwise (a rare bad guess, small n
// or k > n/2) the stored values are histogrammed and gathered once more, as topk does.
template <class Src, class Bad>
void select_into(std::size_t n, std::size_t k, const Src& src, Bad throw_bad, std::uint32_t* idx, float* vals) {
  const Guess guess = (k > 0 && k < n) ? guess_limit(src, n, k) : Guess{};
  if (guess.lim > 0) {
    const std::size_t cap = gather_cap(n, guess.expect);
    auto gidx = scratch<std::uint32_t>(cap);
    auto gval = scratch<float>(cap);
    Gathered g{gidx.get(), gval.get()};
    bool bad = false;
    gather(src, n, guess.lim, guess.mid, cap, g, bad);
    src.finish();
    if (bad) throw_bad();
    if (g.count >= k && g.count <= cap) {
      select_gathered(src, g, k, idx, vals);
      return;
    }
    g.count = std::min(g.count, cap);
    restore_all(src, g);
  } else {
    bool bad = false;
    std::uint32_t none = 0;
    float none_val = 0.0f;
    Gathered g{&none, &none_val};
    gather(src, n, kNone, kNone, 0, g, bad);
    src.finish();
    if (bad) throw_bad();
  }
  // The outputs hold the new states (all finite); select on the stored values as topk does.
  if (k == 0) return;
  const float* out = src.out();
  if (k == n) {
    for (std::size_t i = 0; i < n; ++i) {
      idx[i] = static_cast<std::uint32_t>(i);
      vals[i] = out[i];
      src.zero(static_cast<std::uint32_t>(i));
    }
    return;
  }
  std::vector<std::size_t> hist;
  histogram_top([out](std::size_t i) { return out[i]; }, n, hist);
  RadixSelect sel(hist, k);
  const std::size_t cap = sel.gathered();
  auto gidx = scratch<std::uint32_t>(cap);
  auto gval = scratch<float>(cap);
  Gathered g{gidx.get(), gval.get()};
  bool bad = false;
  gather(ReadSrc{out}, n, sel.top() << 20, kNone, cap, g, bad);
  take(InPlace<Src>{src}, g, sel.cut(g.val, g.count), k, idx, vals);
}

// Whether the one pass should write its outputs by non-temporal stores (28 -> 20 bytes of memory
// traffic a value for dgc: no write-allocate read of u' and v'). x86 only; outputs of at least 1M
// values (a bound chosen, not measured: smaller ones may still be in cache when the fixes, the
// fold and the next round touch them, and streaming would push them out); 16-byte aligned (what
// _mm_stream_ps needs; NumPy's buffers are). And not when two or more (input, output) pairs have
// the output 16..256 bytes after the input modulo 4 KiB: a load whose low 12 address bits match a
// pending store's waits for it, and streamed stores stay pending long. A standalone loop (Zen 4
// EPYC, 2.4M values) took 2.8-3.8x the normal stores' time with both outputs 16 or 32 bytes after
// x, 1.15x with u' 16 after x and v' 16 after u, 0.98-1.04x with one such pair, 0.70-0.98x on 40
// random placements; on 3.95M values with u and v also 16 bytes after x, 10-13x.
bool stream_outputs(std::size_t n, std::initializer_list<const float*> in, std::initializer_list<const float*> out) {
  if (!v4::kHasStream || n < (std::size_t{1} << 20)) return false;
  int close = 0;
  for (const float* q : out) {
    const auto qa = reinterpret_cast<std::uintptr_t>(q);
    if (qa % 16 != 0) return false;
    for (const float* p : in) {
      const std::uintptr_t d = (qa - reinterpret_cast<std::uintptr_t>(p)) % 4096;
      close += d != 0 && d <= 256;
    }
  }
  return close < 2;
}

}  // namespace

void dgc_select(const float* x, const float* u, const float* v, std::size_t n, float m, std::size_t k,
                float* u_out, float* v_out, std::uint32_t* idx, float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  require(std::isfinite(m) && m >= 0.0f && m <= 1.0f, "m must be in [0, 1], got " + std::to_string(m));
  // The velocity is non-finite iff an input is or the sums overflow, so one flag over it checks
  // them all. Both new states go into the fresh outputs, so a failure leaves the caller's state
  // as it was.
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
  if (stream_outputs(n, {x, u, v}, {u_out, v_out})) {
    select_into(n, k, DgcSrc<true>{{}, x, u, v, m, u_out, v_out}, throw_bad, idx, vals);
  } else {
    select_into(n, k, DgcSrc<false>{{}, x, u, v, m, u_out, v_out}, throw_bad, idx, vals);
  }
}

void topk_into(const float* x, const float* residual, std::size_t n, std::size_t k, float* r_out,
               std::uint32_t* idx, float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  auto throw_bad = [&]() { throw_nonfinite(x, residual, n); };
  const bool nt = stream_outputs(n, {x, residual ? residual : x}, {r_out});
  if (residual && nt) {
    select_into(n, k, AccIntoSrc<true, true>{{}, x, residual, r_out}, throw_bad, idx, vals);
  } else if (residual) {
    select_into(n, k, AccIntoSrc<true>{{}, x, residual, r_out}, throw_bad, idx, vals);
  } else if (nt) {
    select_into(n, k, AccIntoSrc<false, true>{{}, x, nullptr, r_out}, throw_bad, idx, vals);
  } else {
    select_into(n, k, AccIntoSrc<false>{{}, x, nullptr, r_out}, throw_bad, idx, vals);
  }
}

void scatter_sub(float* out, std::size_t n, const std::uint32_t* idx, const float* a, const float* b,
                 std::size_t k) {
  std::uint32_t top = 0;
  for (std::size_t j = 0; j < k; ++j) top = std::max(top, idx[j]);
  require(k == 0 || top < n, "indices must be below out.size (" + std::to_string(n) + "), got " + std::to_string(top));
  constexpr std::size_t kAhead = 16;
  std::size_t j = 0;
  for (; j + kAhead < k; ++j) {
    __builtin_prefetch(out + idx[j + kAhead], 1);
    out[idx[j]] = a[j] - b[j];
  }
  for (; j < k; ++j) out[idx[j]] = a[j] - b[j];
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

// Appends up to 32 bits LSB-first; each 32-bit word leaves whole once complete (bytes in
// little-endian order on any machine; the compiler makes it one store where it can). A byte at a
// time cost a loop iteration per byte.
struct BitWriter {
  std::uint8_t* out;
  std::uint64_t acc = 0;
  unsigned nbits = 0;  // below 32 between calls
  void put(std::uint64_t value, unsigned len) {  // len <= 32, value < 2**len
    acc |= value << nbits;
    nbits += len;
    if (nbits >= 32) {
      const auto word = static_cast<std::uint32_t>(acc);
      out[0] = static_cast<std::uint8_t>(word);
      out[1] = static_cast<std::uint8_t>(word >> 8);
      out[2] = static_cast<std::uint8_t>(word >> 16);
      out[3] = static_cast<std::uint8_t>(word >> 24);
      out += 4;
      acc >>= 32;
      nbits -= 32;
    }
  }
  void finish() {
    for (; nbits > 0; nbits = nbits > 8 ? nbits - 8 : 0, acc >>= 8) *out++ = static_cast<std::uint8_t>(acc);
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
    const std::uint64_t code = 1u | (low << 1);  // the one bit, then the b low bits
    if (q + b + 1 <= 32) {
      w.put(code << q, static_cast<unsigned>(q) + b + 1);  // the usual case: one put per index
    } else {
      w.put(0, static_cast<unsigned>(q));
      w.put(code, b + 1);
    }
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
