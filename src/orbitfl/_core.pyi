"""Typed stubs for orbitfl._core, the C++17 compression kernels.

This file is the contract between the kernels (csrc/), their NumPy reference
(orbitfl.kernels.reference, same names and semantics) and the codec pipeline.

Conventions for every kernel:
- float inputs are float32 and C-contiguous, of any shape (read as flat); any other dtype is a
  TypeError, a non-contiguous array a ValueError. Inputs are never copied.
- bad values (bits out of range, k > n, wrong lengths, NaN/Inf where a kernel cannot give them a
  meaning) raise ValueError with a message naming the argument.
- the GIL is released while computing, so kernels may be called from several threads at once.
- bit packing is LSB-first: symbol i occupies bits [i*b, (i+1)*b) of the little-endian bit stream.
- deterministic kernels give bit-identical output on x86-64 and aarch64 and in the NumPy
  reference; stochastic rounding draws from a counter-based generator keyed by (seed, index),
  so it is reproducible too.
"""

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from orbitfl.arrays import F32

__version__: str
simd: str  # "neon", "sse2" or "scalar": the path the hot loops were built with

U8 = NDArray[np.uint8]
U16 = NDArray[np.uint16]
U32 = NDArray[np.uint32]
F64 = NDArray[np.float64]

# ---------------------------------------------------------------------------------------------
# Bit packing
# ---------------------------------------------------------------------------------------------
# The kernels from here to sign_decode also refuse misaligned views
# (np.frombuffer at an odd offset) with ValueError.
def pack_bits(symbols: U8, bits: int) -> U8:
    """Pack uint8 symbols (each < 2**bits, bits in 1..8) densely; len = ceil(n*bits/8)."""

def unpack_bits(packed: U8, n: int, bits: int) -> U8:
    """Inverse of pack_bits; ValueError if packed is shorter than ceil(n*bits/8)."""

# ---------------------------------------------------------------------------------------------
# Uniform quantization, one (lo, step) per bucket (QSGD-style buckets)
# ---------------------------------------------------------------------------------------------
def quantize(
    x: F32, bits: int, bucket: int = 512, stochastic: bool = False, seed: int = 0
) -> tuple[U8, F32, F32]:
    """Quantize x to 2**bits levels per bucket of `bucket` consecutive values.

    Returns (packed, lo, step): lo[j] = min of bucket j (+0.0 for a zero), step[j] =
    (max - min) / (2**bits - 1) in float32 (0 for a constant bucket), packed = pack_bits(q, bits)
    with t = min((x - lo) * inv, 2**bits - 1), inv = float32(1 / step) (a divide by step instead
    where 1 / step overflows, i.e. a subnormal step), q = t rounded to nearest (ties to even), or
    stochastic: floor(t) + (u < t - floor(t)) with u = (draw >> 40) * 2**-24 and draw =
    mix64(mix64(seed) + (i + 1) * 0x9E3779B97F4A7C15) (splitmix64's mix, i the element index,
    mod 2**64); q = 0 where step == 0. bits in 1..8, bucket >= 1, 0 <= seed < 2**64.
    NaN/Inf in x, or a bucket whose max - min or top level lo + (2**bits - 1) * step
    overflows float32 (only values near +-3.4e38): ValueError.
    """

def dequantize(packed: U8, lo: F32, step: F32, n: int, bits: int, bucket: int = 512) -> F32:
    """x_hat[i] = lo[j] + q[i] * step[j], j = i // bucket (float32, product rounded first).

    lo and step: ceil(n / bucket) finite values, step >= 0; packed at least ceil(n*bits/8) bytes.
    """

# ---------------------------------------------------------------------------------------------
# Casts (IEEE-faithful: NaN/Inf preserved, overflow -> Inf, round to nearest even)
# ---------------------------------------------------------------------------------------------
def to_float16(x: F32) -> U16:
    """float32 -> IEEE binary16 bit patterns (same as numpy's astype(float16).view(uint16)).

    NaN -> quiet NaN keeping the sign and the top payload bits. Casts return flat arrays.
    """

def from_float16(h: U16) -> F32:
    """Exact; a NaN comes back quiet (payload kept)."""

def to_bfloat16(x: F32) -> U16:
    """float32 -> bfloat16 bit patterns, round to nearest even; NaN stays a (quiet) NaN."""

def from_bfloat16(h: U16) -> F32:
    """Exact (h << 16); a NaN comes back quiet."""

# ---------------------------------------------------------------------------------------------
# Top-k sparsification with error feedback
# ---------------------------------------------------------------------------------------------
def topk(x: F32, k: int, residual: F32 | None = None) -> tuple[U32, F32]:
    """Keep the k entries of largest |acc|, acc = x + residual (or x).

    Returns (indices ascending, values acc[indices]). Ties in |acc| go to the lower index.
    If residual is given (float32, C-contiguous, writable, same size as x) it is updated in place
    to acc with the kept entries zeroed: the error the caller feeds back next round.
    0 <= k <= x.size; NaN/Inf in x or residual, or x + residual overflowing: ValueError (the
    residual is left untouched).
    """

def topk_ef(
    x: F32, k: int, residual: F32 | None = None, *, residual_out: F32 | None = None
) -> tuple[U32, F32, F32]:
    """topk(x, k, residual) with the new residual returned instead of written in place:
    (indices, values, acc with the kept entries zeroed), acc = x + residual (or x). x and residual
    (float32, C-contiguous, same size) are only read. Errors as topk's.

    residual_out: an array to write the new residual into and return (float32, C-contiguous,
    writable, x's size, sharing no memory with x or residual: ValueError otherwise), instead of a
    new one; its contents are unspecified after an error.
    """

def dgc_select(
    x: F32,
    momentum: F32,
    residual: F32,
    m: float,
    k: int,
    *,
    momentum_out: F32 | None = None,
    residual_out: F32 | None = None,
) -> tuple[U32, F32, F32, F32]:
    """Deep Gradient Compression's sender step in one pass: u = m·momentum + x, v = residual + u
    (float32 product and sums, as NumPy rounds them), the k entries of largest |v| kept.

    Returns (indices ascending, v[indices], u, v) with u and v zeroed at the indices (factor
    masking), both new arrays: x, momentum and residual (float32, C-contiguous, same size) are only
    read. Ties in |v| go to the lower index. 0 <= k <= x.size, 0 <= m < 1; NaN/Inf in an input, or
    v overflowing: ValueError.

    momentum_out / residual_out: arrays to write u / v into and return instead of new ones
    (float32, C-contiguous, writable, x's size, sharing no memory with an input or each other:
    ValueError otherwise); their contents are unspecified after an error.
    """

def scatter_sub(out: F32, indices: U32, a: F32, b: F32) -> None:
    """out[indices] = a - b in place (float32 subtractions, in order: a repeated index keeps the
    last). out: float32, C-contiguous, writable; indices uint32; a, b float32 of the indices'
    size. An index >= out.size: ValueError before anything is written.
    """

def delta_encode_indices(indices: U32) -> U8:
    """Strictly ascending indices -> LEB128 varints of the gaps (first gap from -1)."""

def delta_decode_indices(buf: U8, k: int) -> U32:
    """Inverse of delta_encode_indices; ValueError on a truncated or overlong buffer (bytes left
    after k varints), a varint over 5 bytes or with a trailing zero group, a zero gap, or an index
    beyond uint32."""

def rice_best_param(indices: U32) -> int:
    """The Golomb-Rice parameter b in 0..31 coding these strictly ascending indices in the fewest
    bits (ties to the smaller b); 0 for no indices. ValueError unless strictly ascending."""

def rice_encode_indices(indices: U32, b: int) -> U8:
    """Strictly ascending indices -> Golomb-Rice codes (Golomb 1966, Rice 1979) of their gaps:
    v = gap - 1 (first gap from -1) as v >> b zero bits, a one bit, then the b low bits of v,
    LSB-first, the last byte zero-padded. ValueError unless strictly ascending or b in 0..31."""

def rice_decode_indices(buf: U8, k: int, b: int) -> U32:
    """Inverse of rice_encode_indices; ValueError on a truncated stream, bytes or nonzero padding
    bits after the k-th code, a gap or index beyond uint32, k < 0 or b outside 0..31."""

# ---------------------------------------------------------------------------------------------
# Sign compression and error-feedback sign (1 bit per value plus one scale)
# ---------------------------------------------------------------------------------------------
def sign_encode(x: F32, residual: F32 | None = None) -> tuple[U8, float]:
    """acc = x + residual; returns (packed sign bits, 1 = acc >= 0, scale = mean |acc|).

    scale = float32(S / n), 0.0 for an empty x, S the float64 sum of |acc| in a fixed order: eight
    lanes (index mod 8) each summed left to right, then ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)).
    If residual is given it is updated in place to acc - scale * sign(acc) (EF-signSGD).
    NaN/Inf in x or residual, or x + residual overflowing: ValueError.
    """

def sign_decode(packed: U8, n: int, scale: float) -> F32:
    """x[i] = +scale if bit i is set else -scale, scale rounded to float32 (must stay finite)."""

# ---------------------------------------------------------------------------------------------
# Loss-aware quantization (Hou & Kwok, LAQ), the per-tensor step of SpaceDML's adaptive
# loss-aware quantization. Levels: bits == 1 -> {-1, +1}; bits >= 2 -> L = 2**bits - 1 levels
# -1 + 2j/(L-1), j = 0..L-1 (symmetric, with 0). x_hat = alpha * level[code].
# The bit width per tensor under a byte budget: orbitfl.kernels.alq.allocate_bits (Python).
# ---------------------------------------------------------------------------------------------
def laq_quantize(
    x: F32, d: F32, bits: int, max_iter: int = 100, tol: float = 1e-6, alpha: float | None = None
) -> tuple[U8, float, float]:
    """Fit alpha and codes minimising sum d * (x - alpha * level[code])**2, alternating
    codes = nearest level of x / alpha (ties to even) and alpha = sum(d x b) / sum(d b^2), from
    alpha = max|x|, until |d alpha| <= tol * alpha (relative, so the result does not depend on the
    scale of x) or max_iter (>= 0) alternations. The values are grouped once into buckets of
    consecutive values (top 16 bits of their order); an alternation adds whole buckets through
    prefix sums and reads value by value only the buckets a code step passes through. From 2**16
    values on, coarse alternations (each bucket coded as its smallest possible value) come first
    and exact ones finish; max_iter counts both, at least one exact. bits == 1 is the fixed point
    in closed form, alpha = sum(d |x|) / sum(d) with codes = (x >= 0), whatever max_iter.

    d is the curvature weight (e.g. sqrt(Adam v) + eps), float32, same size as x, all > 0.
    Returns (packed codes, alpha, weighted error). alpha is rounded to float32 (what a payload
    carries; a fit beyond the largest float32 is clamped to it) and the codes are the nearest
    levels for that alpha; the error is sum d * (x - laq_dequantize(...))**2 in float64.
    bits in 1..8. All-zero x: alpha = 0, codes of level 0 (bits == 1: of +1).
    alpha (optional): skip the fit and take this alpha (rounded to float32; >= 0, finite, within
    the float32 range, else ValueError) as where it ended: with the alpha laq_errors reported for
    the same x, d, bits, max_iter and tol, the output is what the fit gives, without fitting again.
    NaN/Inf in x or d, d <= 0, tol < 0: ValueError. Like every clustering kernel below, it
    refuses misaligned float32 views with ValueError.
    """

def laq_errors(
    x: F32, d: F32, widths: Sequence[int], max_iter: int = 100, tol: float = 1e-6
) -> tuple[F64, F64]:
    """(alphas, errors), float64 arrays: the alpha and weighted error laq_quantize(x, d, w,
    max_iter, tol) returns, for each w in widths (each in 0..8; TypeError for a str or a
    non-sequence), bit for bit; w = 0 (not sent) gives alpha 0 and sum d * x**2 summed in
    index order. The checks and the bucketing of (x, d) are done once for all
    widths and no codes are written: what ALQ's allocation needs per tensor."""

def laq_dequantize(packed: U8, n: int, bits: int, alpha: float) -> F32:
    """x_hat = float32(alpha * level[code]); ValueError for a code with no level (2**bits - 1 at
    bits >= 2), a short buffer or an alpha that is not finite or beyond the float32 range."""

# ---------------------------------------------------------------------------------------------
# 1-D k-means (parameter clustering / weight sharing, coreset codec)
# ---------------------------------------------------------------------------------------------
def kmeans1d(x: F32, k: int, method: str = "hist", iters: int = 50, seed: int = 0) -> tuple[F32, U8, float]:
    """Cluster the values of x into k groups (1 <= k <= 256, k <= x.size unless x is empty).

    method: "optimal" (exact DP over sorted values; needs k * distinct values <= 2**25, else
    ValueError), "hist" (exact DP over at most 2048 coarse bins for k <= 32, 8192 above, then
    Lloyd on the 2^12 (2^14) fine bins as weighted points at their exact means, both on a
    fixed-point grid: sums of q = rint(x * 2^s), |q| <= 2^30; no value is read after the
    histogram; near-optimal and fast; the default; docs/algorithms.md says when it falls back
    and how far its fixed point lies from per-value Lloyd's), "lloyd"
    (k-means++ seeding drawn from the counter-based generator keyed by seed, then Lloyd). Lloyd
    runs at most `iters` rounds and stops when no centroid moves. Returns (centroids ascending,
    length k, duplicates when x has fewer than k distinct values, never -0.0; labels uint8 as
    kmeans_assign gives them; sse as a float). All three methods are deterministic and
    identical bit for bit in the NumPy reference. Empty x: k zero centroids. NaN/Inf: ValueError.
    """

def kmeans_centroids(x: F32, k: int, method: str = "hist", iters: int = 50, seed: int = 0) -> F32:
    """kmeans1d(...)[0] without the labelling pass (same checks, same centroids)."""

def kmeans_assign(x: F32, centroids: F32) -> tuple[U8, float]:
    """Label each value with its nearest centroid (centroids ascending, 1..256 of them;
    ties to the lower id, also among equal centroids); returns (labels, sse)."""

def kmeans_pack(x: F32, centroids: F32, bits: int) -> U8:
    """pack_bits(kmeans_assign(x, centroids)[0], bits) in one pass, without the SSE (the coreset
    codec's labels). Same checks as kmeans_assign; bits in 1..8 with 2**bits >= len(centroids),
    else ValueError."""

# ---------------------------------------------------------------------------------------------
# Gradient compression via centroid (GCC)
# ---------------------------------------------------------------------------------------------
def gcc_encode(
    x: F32,
    k: int = 16,
    rho: float = 0.5,
    residual: F32 | None = None,
    iters: int = 20,
    seed: int = 0,
    method: str = "hist",
) -> tuple[F32, U8, U8, F32]:
    """acc = x + residual; 1-D k-means of acc into min(k, n) centroids (kmeans1d's centroids with
    method, iters, seed); the floor(rho * n) values nearest their centroid (ties to the lower
    index) are replaced by its id, the rest travel exactly.

    Returns (centroids, mask = pack_bits(replaced, 1), ids = pack_bits(id of each replaced value
    in index order, ceil(log2 len(centroids)) bits, at least 1), exact = the other values in index
    order). If residual is given (float32, C-contiguous, writable, same size) it is updated in
    place to acc - decoded (float32; 0 where sent exactly). rho in [0, 1], k in 1..256. NaN/Inf in
    x, residual or x + residual: ValueError, and the residual is left untouched.
    """

def gcc_encode_ef(
    x: F32,
    k: int = 16,
    rho: float = 0.5,
    residual: F32 | None = None,
    iters: int = 20,
    seed: int = 0,
    method: str = "hist",
    *,
    residual_out: F32 | None = None,
) -> tuple[F32, U8, U8, F32, F32]:
    """gcc_encode(x, k, rho, residual, ...) with the new residual returned instead of written in
    place: (centroids, mask, ids, exact, acc - decoded), the same values. x and residual (float32,
    C-contiguous, same size) are only read; without residual, acc is x. Errors as gcc_encode's.

    residual_out: an array to write the new residual into and return (float32, C-contiguous,
    writable, x's size, sharing no memory with x or residual: ValueError otherwise), instead of a
    new one; its contents are unspecified after an error.
    """

def gcc_decode(centroids: F32, mask: U8, ids: U8, exact: F32, n: int) -> F32:
    """Inverse of gcc_encode; ValueError for a short mask or ids buffer, an id >= len(centroids),
    or len(exact) != n - (ones among the mask's first n bits)."""

# --- optimizer steps (orbitfl.agent.optim), in place over flat float32 arrays of one length ---------

def adamw_step(
    p: F32,
    g: F32,
    m: F32,
    v: F32,
    b1: float,
    b2: float,
    c1: float,
    c2: float,
    lr_c: float,
    eps: float,
    decay: float,
) -> None:
    """ORT training's AdamW (adam_mode 1): m = b1 m + c1 g, v = b2 v + c2 g^2;
    p -= m / (sqrt(v) + eps) * lr_c; p *= decay."""

def sgd_step(p: F32, g: F32, sq: F32, lr: float, beta: float) -> None:
    """p -= lr g; sq = beta sq + (1 - beta) g^2."""

def optim_simd() -> str:
    """The path adamw_step takes on this CPU: "avx512", "avx2" or "generic"."""
