"""NumPy reference: bit packing, uniform quantization, casts, top-k, sign.

Same names, arguments, results and errors as the C++ kernels in orbitfl._core (see _core.pyi).
Float arithmetic is written in the order the C++ uses, one float32 rounding per operation, so the
deterministic kernels agree bit for bit; stochastic rounding uses the same counter-based generator.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The kernels of orbitfl._core, nothing else: `reference` re-exports exactly these. Helpers other
# references share (rng_u64, packed_size) are imported by name.
__all__ = [
    "delta_decode_indices",
    "delta_encode_indices",
    "dequantize",
    "dgc_select",
    "from_bfloat16",
    "from_float16",
    "pack_bits",
    "quantize",
    "rice_best_param",
    "rice_decode_indices",
    "rice_encode_indices",
    "scatter_sub",
    "sign_decode",
    "sign_encode",
    "to_bfloat16",
    "to_float16",
    "topk",
    "topk_ef",
    "unpack_bits",
]

from orbitfl.arrays import F32

U8 = NDArray[np.uint8]
U16 = NDArray[np.uint16]
U32 = NDArray[np.uint32]
U64 = NDArray[np.uint64]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


# --- argument checks (the C++ bindings raise the same types with the same wording) -----------------
def _array(name: str, a: Any, dtype: type[np.generic]) -> NDArray[Any]:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of {np.dtype(dtype).name}, got {type(a).__name__}")
    if a.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not a.flags.aligned:  # the C++ kernels cannot read through a misaligned pointer
        raise ValueError(f"{name} must be aligned to {a.dtype.alignment} bytes (copy it first)")
    return a.reshape(-1)


def _int(name: str, v: Any) -> int:
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None


def _bits(bits: Any) -> int:
    b = _int("bits", bits)
    if not 1 <= b <= 8:
        raise ValueError(f"bits must be in 1..8, got {b}")
    return b


def _count(name: str, v: Any) -> int:
    n = _int(name, v)
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    return n


def _finite(name: str, a: F32) -> None:
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")


def _residual(residual: Any, n: int) -> F32 | None:
    if residual is None:
        return None
    r = _array("residual", residual, np.float32)
    if r.size != n:
        raise ValueError(f"residual must have the size of x ({n}), got {r.size}")
    if not residual.flags.writeable:
        raise ValueError("residual must be writable (it is updated in place)")
    _finite("residual", r)
    return r


def _out(name: str, out: Any, n: int, others: Sequence[NDArray[Any] | None]) -> F32 | None:
    """An output lent for a new state (None: a new array), checked as the C++ binding checks it:
    no byte shared with the inputs or another output (a bounds test, as the binding's)."""
    if out is None:
        return None
    a = _array(name, out, np.float32)
    if a.size != n:
        raise ValueError(f"{name} must have the size of x ({n}), got {a.size}")
    if not out.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if n and any(o is not None and np.may_share_memory(a, o) for o in others):
        raise ValueError(f"{name} must not overlap the inputs or the other output")
    return a


def _accumulate(x: F32, r: F32 | None) -> F32:
    if r is None:
        return x
    with np.errstate(over="ignore"):
        acc = x + r
    if acc.size and not np.isfinite(acc).all():
        raise ValueError("x + residual overflows float32")
    return acc


# --- bit packing ------------------------------------------------------------------------------------
def packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def _pack(q: U8, bits: int) -> U8:
    # LSB-first: symbol i occupies bits [i*bits, (i+1)*bits) of a little-endian bit stream.
    planes = (q[:, None] >> np.arange(bits, dtype=np.uint8)) & np.uint8(1)
    return np.packbits(planes.reshape(-1), bitorder="little")


def _unpack(packed: U8, n: int, bits: int) -> U8:
    flat = np.unpackbits(packed[: packed_size(n, bits)], count=n * bits, bitorder="little")
    weights = (np.uint8(1) << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    out: U8 = (flat.reshape(n, bits) * weights).sum(axis=1, dtype=np.uint8)
    return out


def pack_bits(symbols: U8, bits: int) -> U8:
    """Pack uint8 symbols (each < 2**bits, bits in 1..8) densely; len = ceil(n*bits/8)."""
    s = _array("symbols", symbols, np.uint8)
    b = _bits(bits)
    if s.size and int(s.max()) >> b:
        raise ValueError(f"symbols must be < 2**bits = {1 << b}, got {int(s.max())}")
    return _pack(s, b)


def unpack_bits(packed: U8, n: int, bits: int) -> U8:
    """Inverse of pack_bits; ValueError if packed is shorter than ceil(n*bits/8)."""
    p = _array("packed", packed, np.uint8)
    count = _count("n", n)
    b = _bits(bits)
    need = packed_size(count, b)
    if p.size < need:
        raise ValueError(f"packed has {p.size} bytes, {need} needed for n={count} at {b} bits")
    return _unpack(p, count, b)


# --- counter-based generator --------------------------------------------------------------------------
def _mix64_int(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _mix64(z: U64) -> U64:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def rng_u64(seed: int, index: U64) -> U64:
    """Draw number `index` of stream `seed`: mix64(mix64(seed) + (index + 1) * golden), mod 2**64.

    The splitmix64 finaliser of a Weyl sequence; csrc/rng.hpp computes the same in C++.
    """
    key = np.uint64(_mix64_int(seed & _MASK64))
    return _mix64(key + (index.astype(np.uint64) + np.uint64(1)) * np.uint64(_GOLDEN))


def _seed(seed: Any) -> int:
    s = _int("seed", seed)
    if not 0 <= s <= _MASK64:
        raise ValueError(f"seed must be in 0..2**64-1, got {s}")
    return s


# --- uniform quantization -----------------------------------------------------------------------------
def quantize(
    x: F32, bits: int, bucket: int = 512, stochastic: bool = False, seed: int = 0
) -> tuple[U8, F32, F32]:
    """Quantize x to 2**bits levels per bucket of `bucket` consecutive values (see _core.pyi)."""
    v = _array("x", x, np.float32)
    b = _bits(bits)
    bk = _int("bucket", bucket)
    if bk < 1:
        raise ValueError(f"bucket must be >= 1, got {bk}")
    s = _seed(seed)
    _finite("x", v)
    n = v.size
    if n == 0:
        empty = np.zeros(0, np.float32)
        return np.zeros(0, np.uint8), empty, empty.copy()
    starts = np.arange(0, n, bk)
    mn = np.minimum.reduceat(v, starts)
    mx = np.maximum.reduceat(v, starts)
    with np.errstate(over="ignore"):
        # + 0 turns a -0.0 range (-0.0 - +0.0) into +0.0: zeros' signs depend on min()'s order.
        rng = (mx - mn) + np.float32(0)
    if not np.isfinite(rng).all():
        raise ValueError("x: a bucket's range max - min overflows float32")
    levels = np.float32((1 << b) - 1)
    # + 0 turns a -0.0 minimum into +0.0, so lo does not depend on which zero min() met first.
    lo = (mn + np.float32(0)).astype(np.float32)
    step = (rng / levels).astype(np.float32)
    with np.errstate(over="ignore"):
        top = lo + levels * step
    if not np.isfinite(top).all():
        # The top level can still round past FLT_MAX when max is near it; dequantize would give Inf.
        raise ValueError("x: a bucket's top level lo + (2**bits - 1) * step overflows float32")
    j = np.arange(n) // bk  # bucket of each value
    lo_e, step_e = lo[j], step[j]
    with np.errstate(divide="ignore", over="ignore"):
        inv = (np.float32(1) / step).astype(np.float32)
    inv_e = inv[j]
    mul = np.isfinite(inv_e)
    d = v - lo_e
    t = np.zeros(n, np.float32)
    # A multiply by 1/step (what the C++ hot loop does); a subnormal step, whose reciprocal
    # overflows, divides instead; a constant bucket (or one whose step underflows to 0) gives q = 0.
    np.multiply(d, inv_e, out=t, where=mul)
    np.divide(d, step_e, out=t, where=~mul & (step_e != 0))
    t = np.minimum(t, levels)
    if stochastic:
        fl = np.floor(t)
        frac = t - fl
        r = rng_u64(s, np.arange(n, dtype=np.uint64))
        u = (r >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
        q = np.minimum(fl + (u < frac).astype(np.float32), levels)
    else:
        q = np.rint(t)
    return _pack(q.astype(np.uint8), b), lo, step


def dequantize(packed: U8, lo: F32, step: F32, n: int, bits: int, bucket: int = 512) -> F32:
    """x_hat[i] = lo[j] + q[i] * step[j], j = i // bucket."""
    p = _array("packed", packed, np.uint8)
    lo_v = _array("lo", lo, np.float32)
    step_v = _array("step", step, np.float32)
    count = _count("n", n)
    b = _bits(bits)
    bk = _int("bucket", bucket)
    if bk < 1:
        raise ValueError(f"bucket must be >= 1, got {bk}")
    nb = -(-count // bk)
    if lo_v.size != nb or step_v.size != nb:
        raise ValueError(
            f"lo and step must have ceil(n/bucket) = {nb} entries, got {lo_v.size} and {step_v.size}"
        )
    _finite("lo", lo_v)
    _finite("step", step_v)
    if nb and (step_v < 0).any():
        raise ValueError("step must be >= 0")
    need = packed_size(count, b)
    if p.size < need:
        raise ValueError(f"packed has {p.size} bytes, {need} needed for n={count} at {b} bits")
    q = _unpack(p, count, b).astype(np.float32)
    j = np.arange(count) // bk
    # A finite lo and step can still overflow (a corrupted payload's step near float32's max): the
    # result is Inf, as the C++ kernel gives it, for the decoder's finiteness check to refuse.
    with np.errstate(over="ignore", invalid="ignore"):
        x_hat: F32 = lo_v[j] + q * step_v[j]
    return x_hat


# --- casts ----------------------------------------------------------------------------------------------
def to_float16(x: F32) -> U16:
    """float32 -> IEEE binary16 bit patterns, round to nearest even; NaN -> quiet NaN (sign and top
    payload bits kept), overflow -> Inf."""
    f = _array("x", x, np.float32).view(np.uint32)
    sign = ((f >> np.uint32(16)) & np.uint32(0x8000)).astype(np.uint32)
    a = f & np.uint32(0x7FFFFFFF)
    out = np.empty(f.size, np.uint32)
    nan = a > np.uint32(0x7F800000)
    big = (a >= np.uint32(0x477FF000)) & ~nan  # rounds to >= 65520 -> Inf
    small = a < np.uint32(0x38800000)  # below the smallest normal half 2**-14
    normal = ~(nan | big | small)
    out[nan] = np.uint32(0x7E00) | ((a[nan] >> np.uint32(13)) & np.uint32(0x3FF))
    out[big] = np.uint32(0x7C00)
    an = a[normal]
    # Rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even.
    odd = (an >> np.uint32(13)) & np.uint32(1)
    out[normal] = (an - np.uint32((127 - 15) << 23) + np.uint32(0xFFF) + odd) >> np.uint32(13)
    # Subnormal halves: value * 2**24 rounded to an integer, by float arithmetic on the exact
    # magic 0.5: adding it aligns the binary point so the FPU rounds to nearest even for us.
    sub = a[small].view(np.float32) + np.float32(0.5)
    out[small] = sub.view(np.uint32) - np.uint32(0x3F000000)
    return (out | sign).astype(np.uint16)


def from_float16(h: U16) -> F32:
    """IEEE binary16 bit patterns -> float32 (exact); NaN -> quiet NaN with its payload."""
    v = _array("h", h, np.uint16)
    # aarch64 converts with the hardware instruction, which raises the IEEE invalid flag for
    # signalling NaNs (x86-64 does not); NaN payloads are rebuilt below either way.
    with np.errstate(invalid="ignore"):
        out = v.view(np.float16).astype(np.float32)
    nan = (v & np.uint16(0x7C00)) == np.uint16(0x7C00)
    nan &= (v & np.uint16(0x3FF)) != 0
    if nan.any():
        bits = out.view(np.uint32)
        hv = v[nan].astype(np.uint32)
        bits[nan] = (
            ((hv & np.uint32(0x8000)) << np.uint32(16))
            | np.uint32(0x7FC00000)
            | ((hv & np.uint32(0x3FF)) << np.uint32(13))
        )
    return out


def to_bfloat16(x: F32) -> U16:
    """float32 -> bfloat16 bit patterns, round to nearest even; NaN stays a (quiet) NaN."""
    f = _array("x", x, np.float32).view(np.uint32)
    nan = (f & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    with np.errstate(over="ignore"):
        rounded = (f + np.uint32(0x7FFF) + ((f >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    out = np.where(nan, (f >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return out.astype(np.uint16)


def from_bfloat16(h: U16) -> F32:
    """bfloat16 bit patterns -> float32 (exact); NaN -> quiet NaN."""
    v = _array("h", h, np.uint16).astype(np.uint32)
    bits = v << np.uint32(16)
    nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    bits[nan] |= np.uint32(0x00400000)
    return bits.view(np.float32)


# --- top-k ------------------------------------------------------------------------------------------------
def topk(x: F32, k: int, residual: F32 | None = None) -> tuple[U32, F32]:
    """Keep the k entries of largest |acc|, acc = x + residual (or x); see _core.pyi."""
    v = _array("x", x, np.float32)
    kk = _int("k", k)
    if not 0 <= kk <= v.size:
        raise ValueError(f"k must be in 0..x.size ({v.size}), got {kk}")
    r = _residual(residual, v.size)
    _finite("x", v)
    acc = _accumulate(v, r)
    # A stable sort of -|acc| puts equal magnitudes in index order: ties go to the lower index.
    order = np.argsort(-np.abs(acc), kind="stable")
    idx = np.sort(order[:kk]).astype(np.uint32)
    vals = acc[idx].astype(np.float32)
    if r is not None:
        r[...] = acc
        r[idx] = np.float32(0)
    return idx, vals


def topk_ef(
    x: F32, k: int, residual: F32 | None = None, *, residual_out: F32 | None = None
) -> tuple[U32, F32, F32]:
    """topk with the new residual returned, the inputs only read; see _core.pyi."""
    v = _array("x", x, np.float32)
    r = None if residual is None else _array("residual", residual, np.float32)
    if r is not None and r.size != v.size:
        raise ValueError(f"residual must have the size of x ({v.size}), got {r.size}")
    kk = _int("k", k)
    if not 0 <= kk <= v.size:
        raise ValueError(f"k must be in 0..x.size ({v.size}), got {kk}")
    ro = _out("residual_out", residual_out, v.size, (v, r))
    _finite("x", v)
    if r is not None:
        _finite("residual", r)
    if r is None:  # acc is x itself (no + 0, which would turn -0 into +0)
        idx, vals = topk(v, kk)
        out = v.copy()
        out[idx] = np.float32(0)
    else:
        out = r.copy()
        idx, vals = topk(v, kk, out)
    if ro is not None:
        ro[...] = out
    return idx, vals, out if residual_out is None else residual_out


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
    """u = m·momentum + x, v = residual + u, keep the k largest |v|; see _core.pyi."""
    xv = _array("x", x, np.float32)
    u = _array("momentum", momentum, np.float32)
    v = _array("residual", residual, np.float32)
    for name, a in (("momentum", u), ("residual", v)):
        if a.size != xv.size:
            raise ValueError(f"{name} must have the size of x ({xv.size}), got {a.size}")
    if isinstance(m, bool) or not isinstance(m, int | float | np.floating | np.integer):
        raise TypeError(f"m must be a float, got {type(m).__name__}")
    if not 0 <= m < 1:
        raise ValueError(f"m must be in [0, 1), got {m}")
    kk = _int("k", k)
    if not 0 <= kk <= xv.size:
        raise ValueError(f"k must be in 0..x.size ({xv.size}), got {kk}")
    uo = _out("momentum_out", momentum_out, xv.size, (xv, u, v))
    vo = _out("residual_out", residual_out, xv.size, (xv, u, v, uo))
    _finite("x", xv)
    _finite("momentum", u)
    _finite("residual", v)
    with np.errstate(over="ignore", invalid="ignore"):
        un = np.multiply(u, np.float32(m))
        np.add(un, xv, out=un)
        vn = v + un
    if vn.size and not np.isfinite(vn).all():
        raise ValueError("the velocity (residual + m * momentum + x) overflows float32")
    order = np.argsort(-np.abs(vn), kind="stable")
    idx = np.sort(order[:kk]).astype(np.uint32)
    vals = vn[idx].astype(np.float32)
    un[idx] = np.float32(0)
    vn[idx] = np.float32(0)
    if uo is not None:
        uo[...] = un
    if vo is not None:
        vo[...] = vn
    u_ret = un if momentum_out is None else momentum_out
    v_ret = vn if residual_out is None else residual_out
    return idx, vals, u_ret, v_ret


def scatter_sub(out: F32, indices: U32, a: F32, b: F32) -> None:
    """out[indices] = a - b in place; see _core.pyi."""
    o = _array("out", out, np.float32)
    if not out.flags.writeable:
        raise ValueError("out must be writable (it is updated in place)")
    idx = _array("indices", indices, np.uint32)
    av = _array("a", a, np.float32)
    bv = _array("b", b, np.float32)
    for name, arr in (("a", av), ("b", bv)):
        if arr.size != idx.size:
            raise ValueError(f"{name} must have the size of indices ({idx.size}), got {arr.size}")
    if idx.size and int(idx.max()) >= o.size:
        raise ValueError(f"indices must be below out.size ({o.size}), got {int(idx.max())}")
    o[idx] = av - bv


def delta_encode_indices(indices: U32) -> U8:
    """Strictly ascending indices -> LEB128 varints of the gaps (first gap from -1)."""
    idx = _array("indices", indices, np.uint32).astype(np.int64)
    if idx.size == 0:
        return np.zeros(0, np.uint8)
    gaps = np.diff(idx, prepend=-1)
    if (gaps <= 0).any():
        raise ValueError("indices must be strictly ascending")
    # Gaps are below 2**33, so at most 5 groups of 7 bits; group j is emitted if gap >= 2**(7j).
    groups = (gaps[:, None] >> (7 * np.arange(5, dtype=np.int64))) & 0x7F
    emitted = gaps[:, None] >= (np.int64(1) << (7 * np.arange(5, dtype=np.int64)))
    emitted[:, 0] = True
    more = np.zeros_like(emitted)
    more[:, :4] = emitted[:, 1:]
    bytes_ = (groups | (more.astype(np.int64) << 7))[emitted]
    return bytes_.astype(np.uint8)


def delta_decode_indices(buf: U8, k: int) -> U32:
    """Inverse of delta_encode_indices; ValueError on a truncated or overlong buffer."""
    b = _array("buf", buf, np.uint8)
    kk = _count("k", k)
    ends = np.flatnonzero(b < 0x80)  # the last byte of each varint has no continuation bit
    if ends.size < kk:
        raise ValueError(f"buf is truncated: {ends.size} complete varints, {kk} expected")
    used = int(ends[kk - 1]) + 1 if kk else 0
    if used != b.size:
        raise ValueError(f"buf is overlong: {b.size - used} bytes after {kk} varints")
    if kk == 0:
        return np.zeros(0, np.uint32)
    ends = ends[:kk]
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if (lengths > 5).any():
        raise ValueError("buf holds a varint longer than 5 bytes")
    if ((lengths > 1) & (b[ends] == 0)).any():
        raise ValueError("buf holds a non-canonical varint (trailing zero group)")
    pos = np.arange(b.size) - np.repeat(starts, lengths)
    vals = (b.astype(np.int64) & 0x7F) << (7 * pos)
    gaps = np.add.reduceat(vals, starts)
    if (gaps == 0).any():
        raise ValueError("buf holds a zero gap: indices must be strictly ascending")
    idx = np.cumsum(gaps) - 1
    if idx[-1] > 0xFFFFFFFF:
        raise ValueError("buf decodes to an index beyond uint32")
    return idx.astype(np.uint32)


RICE_MAX_PARAM = 31


def _rice_param(b: Any) -> int:
    bb = _int("b", b)
    if not 0 <= bb <= RICE_MAX_PARAM:
        raise ValueError(f"b must be in 0..{RICE_MAX_PARAM}, got {bb}")
    return bb


def _rice_values(indices: U32) -> NDArray[np.int64]:
    """gap - 1 of each strictly ascending index (first gap from -1)."""
    idx = _array("indices", indices, np.uint32).astype(np.int64)
    v = np.diff(idx, prepend=-1) - 1
    if (v < 0).any():
        raise ValueError("indices must be strictly ascending")
    return v


def rice_best_param(indices: U32) -> int:
    """The Golomb-Rice parameter b in 0..31 coding these indices in the fewest bits (ties to the
    smaller b); 0 for no indices."""
    v = _rice_values(indices)
    if v.size == 0:
        return 0
    costs = [v.size * (b + 1) + int((v >> b).sum()) for b in range(RICE_MAX_PARAM + 1)]
    return int(np.argmin(costs))  # argmin takes the first of equal costs


def rice_encode_indices(indices: U32, b: int) -> U8:
    """Strictly ascending indices -> Golomb-Rice codes of their gaps: v = gap - 1 as v >> b zero
    bits, a one bit, the b low bits of v; LSB-first, the last byte zero-padded."""
    v = _rice_values(indices)
    bb = _rice_param(b)
    q = v >> bb
    ends = np.cumsum(q + 1 + bb)  # one past each code
    stops = ends - bb - 1  # the one bit after each unary run
    bits = np.zeros(int(ends[-1]) if v.size else 0, np.uint8)
    bits[stops] = 1
    for j in range(bb):
        bits[stops + 1 + j] = (v >> j) & 1
    return np.packbits(bits, bitorder="little")


def rice_decode_indices(buf: U8, k: int, b: int) -> U32:
    """Inverse of rice_encode_indices; ValueError on a truncated stream, bytes or nonzero padding
    bits after the k-th code, or an index beyond uint32."""
    raw = _array("buf", buf, np.uint8)
    kk = _count("k", k)
    bb = _rice_param(b)
    if kk > raw.size * 8 // (bb + 1):
        raise ValueError(
            f"buf is truncated: {raw.size} bytes cannot hold {kk} codes of at least {bb + 1} bits"
        )
    bits = np.unpackbits(raw, bitorder="little")
    total = bits.size
    # A code starting at bit p has its stop bit at the first one at or after p; the walk from code
    # to code is sequential, and skips the ones inside the remainders it has passed.
    ones = np.flatnonzero(bits).tolist()
    stops = np.empty(kk, np.int64)
    pos = j = 0
    for i in range(kk):
        while j < len(ones) and ones[j] < pos:
            j += 1
        if j == len(ones) or ones[j] + 1 + bb > total:
            raise ValueError(f"buf is truncated: {i} complete codes, {kk} expected")
        stops[i] = ones[j]
        pos = ones[j] + 1 + bb
    starts = np.concatenate(([0], stops[:-1] + 1 + bb)) if kk else np.zeros(0, np.int64)
    q = stops - starts
    if (q > (0xFFFFFFFF >> bb)).any():
        raise ValueError("buf decodes to a gap beyond uint32")
    low = np.zeros(kk, np.int64)
    for j in range(bb):
        low |= bits[stops + 1 + j].astype(np.int64) << j
    idx = np.cumsum((q << bb) | low) + np.arange(kk, dtype=np.int64)  # sum of gaps - 1
    if kk and idx[-1] > 0xFFFFFFFF:
        raise ValueError("buf decodes to an index beyond uint32")
    used = (pos + 7) // 8
    if used != raw.size:
        raise ValueError(f"buf is overlong: {raw.size - used} bytes after {kk} codes")
    if bits[pos:].any():
        raise ValueError("buf has nonzero padding bits after the last code")
    return idx.astype(np.uint32)


# --- sign -----------------------------------------------------------------------------------------------
def _lane_sum(a: F32) -> float:
    """Float64 sum in the C++ order: eight lanes (i mod 8) each added left to right, then a tree.

    cumsum down the columns is a strictly sequential accumulate (sum() would be pairwise); the
    zero padding leaves every lane sum unchanged.
    """
    padded = np.zeros(-(-a.size // 8) * 8, np.float64)
    padded[: a.size] = a
    lane = np.cumsum(padded.reshape(-1, 8), axis=0)[-1]
    return float(((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7])))


def sign_encode(x: F32, residual: F32 | None = None) -> tuple[U8, float]:
    """acc = x + residual; returns (packed sign bits, 1 = acc >= 0, scale = mean |acc|).

    The mean is _lane_sum(|acc|) / n rounded to float32 (the C++ summation order).
    If residual is given it is updated in place to acc - scale * sign(acc) (EF-signSGD).
    """
    v = _array("x", x, np.float32)
    r = _residual(residual, v.size)
    _finite("x", v)
    acc = _accumulate(v, r)
    n = acc.size
    scale = np.float32(_lane_sum(np.abs(acc)) / n) if n else np.float32(0)
    positive = acc >= 0
    if r is not None:
        r[...] = acc - np.where(positive, scale, -scale).astype(np.float32)
    return _pack(positive.astype(np.uint8), 1), float(scale)


def sign_decode(packed: U8, n: int, scale: float) -> F32:
    """x[i] = +scale if bit i is set else -scale (scale rounded to float32)."""
    p = _array("packed", packed, np.uint8)
    count = _count("n", n)
    with np.errstate(over="ignore"):
        s32 = np.float32(float(scale))
    need = packed_size(count, 1)
    if p.size < need:
        raise ValueError(f"packed has {p.size} bytes, {need} needed for n={count} at 1 bit")
    if not np.isfinite(s32):
        raise ValueError("scale must be finite (as a float32)")
    bits = _unpack(p, count, 1)
    return np.where(bits.astype(bool), s32, -s32).astype(np.float32)
