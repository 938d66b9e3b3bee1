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
  // histogram of all values finds T's top bits. A second pass writes the residual and gathers,
  // without branches, every entry whose top bits reach T's (their number is known): those above
  // are kept for sure, and two 10-bit histograms over the ones in T's bin finish T. Selection is
  // exact, so the result equals a full sort with ties to the lower index. The first pass also
  // checks that acc is finite (so x and the residual are), before anything is written. Two
  // passes over the inputs; the rest touches only the k-odd gathered entries.
  if (k > 0 && k < n) {
    std::vector<std::size_t> hist(std::size_t{1} << 11);
    std::uint32_t bad = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint32_t u = mag_bits(acc(i));
      bad |= u >= 0x7F800000u;
      ++hist[u >> 20];  // a NaN's bin is still in range; it is refused just below
    }
    if (bad) throw_nonfinite(x, residual, n);
    std::size_t need = k;  // becomes the rank inside the bin `descend` returns
    auto descend = [&need, &hist](std::uint32_t bins) {
      std::size_t above = 0;
      std::uint32_t b = bins - 1;
      while (above + hist[b] < need) above += hist[b--];
      need -= above;
      return b;
    };
    const std::uint32_t top = descend(1u << 11);
    // (k - need) entries lie above T's bin and hist[top] in it
    const std::size_t gathered = k - need + hist[top];
    std::vector<std::uint32_t> gidx(gathered + 1);
    std::vector<float> gval(gathered + 1);
    std::size_t c = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const float a = acc(i);
      const std::uint32_t bin = mag_bits(a) >> 20;
      gidx[c] = static_cast<std::uint32_t>(i);
      gval[c] = a;
      c += bin >= top;
      // entries in T's bin keep acc for now; the kept ones among them are zeroed below
      if (residual) residual[i] = bin > top ? 0.0f : a;
    }
    std::fill(hist.begin(), hist.begin() + 1024, 0);
    for (std::size_t t = 0; t < gathered; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      if ((u >> 20) == top) ++hist[(u >> 10) & 1023u];
    }
    const std::uint32_t mid = descend(1024);
    std::fill(hist.begin(), hist.begin() + 1024, 0);
    for (std::size_t t = 0; t < gathered; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      if ((u >> 10) == ((top << 10) | mid)) ++hist[u & 1023u];
    }
    const std::uint32_t low = descend(1024);
    const std::uint32_t thr = (top << 20) | (mid << 10) | low;
    // `need` entries equal to thr are taken, in index order
    std::size_t taken = 0;
    for (std::size_t t = 0; t < gathered; ++t) {
      const std::uint32_t u = mag_bits(gval[t]);
      const bool keep = u > thr || (u == thr && need > 0);
      if (!keep) continue;
      if (u == thr) --need;
      idx[taken] = gidx[t];
      vals[taken] = gval[t];
      ++taken;
      if (residual) residual[gidx[t]] = 0.0f;
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
