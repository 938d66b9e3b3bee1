#include "topk.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

namespace orbitfl {
namespace {

void check_finite(const float* a, std::size_t n, const char* name) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) throw NonFinite(std::string(name) + " contains NaN or Inf");
  }
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
  check_finite(x, n, "x");
  if (residual) check_finite(residual, n, "residual");
  const Acc acc{x, residual};
  // Radix selection of T = the k-th largest |acc| over its 31 magnitude bits, 11 + 10 + 10 at a
  // time (histograms small enough for L1): each pass narrows the prefix of T. Selection is exact,
  // so the result is the same as a full sort with ties to the lower index. The first pass also
  // checks that acc does not overflow, before anything is written.
  std::uint32_t prefix = 0, mask = 0;
  std::size_t need = k;  // how many entries equal to the final T are taken
  if (k > 0 && k < n) {
    static constexpr int kShift[3] = {20, 10, 0};
    static constexpr int kWidth[3] = {11, 10, 10};
    std::vector<std::size_t> hist(std::size_t{1} << 11);
    for (int pass = 0; pass < 3; ++pass) {
      const int shift = kShift[pass];
      const std::uint32_t bins = 1u << kWidth[pass];
      std::fill(hist.begin(), hist.begin() + bins, 0);
      if (pass == 0) {
        bool bad = false;
        for (std::size_t i = 0; i < n; ++i) {
          const std::uint32_t u = mag_bits(acc(i));
          bad |= u >= 0x7F800000u;
          ++hist[u >> shift];
        }
        if (bad) throw NonFinite("x + residual overflows float32");
      } else {
        for (std::size_t i = 0; i < n; ++i) {
          const std::uint32_t u = mag_bits(acc(i));
          if ((u & mask) == prefix) ++hist[(u >> shift) & (bins - 1)];
        }
      }
      std::size_t above = 0;
      std::uint32_t b = bins - 1;
      while (above + hist[b] < need) above += hist[b--];
      need -= above;
      prefix |= b << shift;
      mask |= (bins - 1) << shift;
    }
  } else if (residual) {
    for (std::size_t i = 0; i < n; ++i) {
      if (mag_bits(acc(i)) >= 0x7F800000u) throw NonFinite("x + residual overflows float32");
    }
  }
  // One pass writes the kept entries and the new residual. k == n keeps all, k == 0 none.
  const std::uint32_t t = k == n ? 0 : (k == 0 ? 0xFFFFFFFFu : prefix);
  if (k == n) need = 0;
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
