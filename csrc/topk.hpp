// Top-k sparsification with an error-feedback residual, and delta + LEB128 coding of the kept
// indices. Semantics: orbitfl/_core.pyi.
#pragma once

#include <cstddef>
#include <cstdint>

namespace orbitfl {

// acc = x + residual (or x when residual is null). Writes the k indices of largest |acc|
// (ties to the lower index) ascending into idx and acc at them into vals. If residual is not
// null it becomes acc with the kept entries zeroed; nothing is written before all checks pass.
// Throws InvalidArgument for k > n or n >= 2**32, NonFinite for NaN/Inf in x, residual or acc.
void topk(const float* x, float* residual, std::size_t n, std::size_t k, std::uint32_t* idx,
          float* vals);

// Bytes delta_encode_indices will write; throws InvalidArgument unless strictly ascending.
std::size_t delta_encoded_size(const std::uint32_t* idx, std::size_t k);
// LEB128 varints of the gaps idx[0] + 1, idx[1] - idx[0], ...; out has delta_encoded_size bytes.
void delta_encode_indices(const std::uint32_t* idx, std::size_t k, std::uint8_t* out);
// Decodes exactly k indices from buf[0..len); throws InvalidArgument on a truncated or overlong
// buffer, a varint over 5 bytes or non-canonical, a zero gap, or an index beyond uint32.
void delta_decode_indices(const std::uint8_t* buf, std::size_t len, std::size_t k, std::uint32_t* out);

}  // namespace orbitfl
