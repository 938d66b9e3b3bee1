// Top-k sparsification with an error-feedback residual, and delta + LEB128 or Golomb-Rice coding
// of the kept indices. Semantics: orbitfl/_core.pyi.
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

// topk with the residual written to r_out (n floats, not aliasing the inputs) instead of in
// place: the same idx, vals and new residual; x and residual (null: zeros) are only read. Throws
// as topk does (r_out is then unspecified).
void topk_into(const float* x, const float* residual, std::size_t n, std::size_t k, float* r_out,
               std::uint32_t* idx, float* vals);

// Deep Gradient Compression's sender step, fused: u' = m·u + x, v' = v + u' (each product and sum
// rounded to float32, no FMA), then the k indices of largest |v'| (ties to the lower index)
// ascending into idx and v' at them into vals; u_out and v_out (n each, not aliasing the inputs)
// receive u' and v' zeroed at the kept indices. x, u and v are only read. Throws InvalidArgument
// for k > n, n >= 2**32 or m outside [0, 1] (the binding asks m < 1), NonFinite for NaN/Inf in
// x, u or v or an overflowing v' (the outputs are then unspecified).
void dgc_select(const float* x, const float* u, const float* v, std::size_t n, float m, std::size_t k,
                float* u_out, float* v_out, std::uint32_t* idx, float* vals);

// out[idx[j]] = a[j] - b[j] for j < k, in order (a repeated index keeps the last), each a float32
// subtraction: error feedback's fold of the later stages' error into the kept places. The indices
// must be below n (InvalidArgument otherwise, before anything is written). The writes land
// anywhere in out, so the lines a few indices ahead are requested while one is written.
void scatter_sub(float* out, std::size_t n, const std::uint32_t* idx, const float* a, const float* b,
                 std::size_t k);

// Bytes delta_encode_indices will write; throws InvalidArgument unless strictly ascending.
std::size_t delta_encoded_size(const std::uint32_t* idx, std::size_t k);
// LEB128 varints of the gaps idx[0] + 1, idx[1] - idx[0], ...; out has delta_encoded_size bytes.
void delta_encode_indices(const std::uint32_t* idx, std::size_t k, std::uint8_t* out);
// Decodes exactly k indices from buf[0..len); throws InvalidArgument on a truncated or overlong
// buffer, a varint over 5 bytes or non-canonical, a zero gap, or an index beyond uint32.
void delta_decode_indices(const std::uint8_t* buf, std::size_t len, std::size_t k, std::uint32_t* out);

// Golomb-Rice (Golomb 1966, Rice 1979) coding of the same gaps, parameter b in 0..kRiceMaxParam:
// v = gap - 1 travels as v >> b zero bits, a one bit, then the b low bits of v, all LSB-first
// in a byte stream whose last byte is zero-padded.
constexpr unsigned kRiceMaxParam = 31;
// The b in 0..kRiceMaxParam giving the fewest bits (ties to the smaller b); 0 for k == 0.
// Throws InvalidArgument unless strictly ascending.
unsigned rice_best_param(const std::uint32_t* idx, std::size_t k);
// Bytes rice_encode_indices will write; throws InvalidArgument unless strictly ascending or for
// b > kRiceMaxParam.
std::size_t rice_encoded_size(const std::uint32_t* idx, std::size_t k, unsigned b);
// Writes the codes into out, which has rice_encoded_size bytes; call it only after that check.
void rice_encode_indices(const std::uint32_t* idx, std::size_t k, unsigned b, std::uint8_t* out);
// Decodes exactly k indices from buf[0..len); throws InvalidArgument on a truncated stream, bytes
// or nonzero padding bits after the k-th code, an index beyond uint32, or b > kRiceMaxParam.
// Never reads outside buf.
void rice_decode_indices(const std::uint8_t* buf, std::size_t len, std::size_t k, unsigned b,
                         std::uint32_t* out);

}  // namespace orbitfl
