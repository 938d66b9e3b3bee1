#include "topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
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

void topk(const float* x, float* residual, std::size_t n, std::size_t k, std::uint32_t* idx,
          float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  const Acc acc{x, residual};
  // Radix selection of T = the k-th largest |acc| over its 31 magnitude bits: an 11-bit
  // histogram of all values finds T's top bits; the magnitudes in that bin (their number is
  // known) are gathered without branches, and two 10-bit histograms over just those finish T.
  // Selection is exact, so the result equals a full sort with ties to the lower index. The first
  // pass also checks that acc is finite (so x and the residual are), before anything is written.
  std::uint32_t t = 0;   // the threshold magnitude (bits)
  std::size_t need = 0;  // how many entries equal to t are taken, in index order
  if (k > 0 && k < n) {
    std::vector<std::size_t> hist(std::size_t{1} << 11);
    std::uint32_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t u = mag_bits(acc(i));
      bad |= u >= 0x7F800000u;
      ++hist[u >> 20];  // a NaN's bin is still in range; it is refused just below
    }
    if (bad) throw_nonfinite(x, residual, n);
    need = k;
    // The bin, from the top, where the count reaches `need`; `need` becomes the rank inside it.
    auto descend = [&need, &hist](std::uint32_t bins) {
      std::size_t above = 0;
      std::uint32_t b = bins - 1;
      while (above + hist[b] < need) above += hist[b--];
      need -= above;
      return b;
    };
    const std::uint32_t top = descend(1u << 11);
    std::vector<std::uint32_t> cand(hist[top] + 1);
    std::size_t c = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t u = mag_bits(acc(i));
      cand[c] = u;
      c += (u >> 20) == top;
    }
    cand.resize(c);
    std::fill(hist.begin(), hist.begin() + 1024, 0);
    for (const std::uint32_t u : cand) ++hist[(u >> 10) & 1023u];
    const std::uint32_t mid = descend(1024);
    std::fill(hist.begin(), hist.begin() + 1024, 0);
    for (const std::uint32_t u : cand) {
      if (((u >> 10) & 1023u) == mid) ++hist[u & 1023u];
    }
    const std::uint32_t low = descend(1024);
    t = (top << 20) | (mid << 10) | low;
  } else {
    std::uint32_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) bad |= mag_bits(acc(i)) >= 0x7F800000u;
    if (bad) throw_nonfinite(x, residual, n);
    t = k == n ? 0 : 0xFFFFFFFFu;  // keep all (no magnitude is below 0) or none
    need = 0;
  }
  // One pass writes the kept entries and the new residual. k == n keeps all, k == 0 none.
  std::size_t taken = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float a = acc(i);
    const std::uint32_t u = mag_bits(a);
    const bool keep = k == n || u > t || (u == t && need > 0);
    if (keep) {
      if (u == t && k != n) --need;
      idx[taken] = static_cast<std::uint32_t>(i);
      vals[taken] = a;
      ++taken;
    }
    if (residual) residual[i] = keep ? 0.0f : a;
  }
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

}  // namespace orbitfl
