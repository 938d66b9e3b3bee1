#include "topk.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
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

void topk(const float* x, float* residual, std::size_t n, std::size_t k, std::uint32_t* idx,
          float* vals) {
  require(k <= n, "k must be in 0..x.size (" + std::to_string(n) + "), got " + std::to_string(k));
  require(n <= 0xFFFFFFFFull, "x has more than 2**32 - 1 elements: indices are uint32");
  check_finite(x, n, "x");
  std::vector<float> acc_buf;
  const float* acc = x;
  if (residual) {
    check_finite(residual, n, "residual");
    acc_buf.resize(n);
    for (std::size_t i = 0; i < n; ++i) acc_buf[i] = x[i] + residual[i];
    check_finite(acc_buf.data(), n, "x + residual (overflow)");
    acc = acc_buf.data();
  }
  std::size_t taken = 0;
  if (k == n) {
    for (std::size_t i = 0; i < n; ++i) idx[i] = static_cast<std::uint32_t>(i);
    taken = n;
  } else if (k > 0) {
    // Threshold selection instead of a full sort: T = the k-th largest magnitude; take every
    // entry above T and, in index order, as many equal to T as still fit (ties to lower index).
    std::vector<float> mag(n);
    for (std::size_t i = 0; i < n; ++i) mag[i] = std::fabs(acc[i]);
    std::nth_element(mag.begin(), mag.begin() + static_cast<std::ptrdiff_t>(k - 1), mag.end(),
                     std::greater<float>());
    const float t = mag[k - 1];
    std::size_t above = 0;
    for (std::size_t i = 0; i < n; ++i) above += std::fabs(acc[i]) > t;
    std::size_t ties = k - above;
    for (std::size_t i = 0; i < n && taken < k; ++i) {
      const float a = std::fabs(acc[i]);
      if (a > t || (a == t && ties > 0)) {
        if (!(a > t)) --ties;
        idx[taken++] = static_cast<std::uint32_t>(i);
      }
    }
  }
  for (std::size_t j = 0; j < taken; ++j) vals[j] = acc[idx[j]];
  if (residual) {
    for (std::size_t i = 0; i < n; ++i) residual[i] = acc[i];
    for (std::size_t j = 0; j < taken; ++j) residual[idx[j]] = 0.0f;
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
