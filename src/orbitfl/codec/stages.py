"""The built-in stages: each is a thin adapter from a kernel (``orbitfl.kernels``) to the recipe.

Each stage says what it puts on the wire (:meth:`Stage.layout`) so that the payload validator can
check untrusted input before any kernel sees it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import zstandard
from numpy.typing import NDArray

from orbitfl.arrays import F32
from orbitfl.codec.registry import (
    EncodeContext,
    Encoded,
    Field,
    FloatStage,
    Meta,
    Param,
    Stage,
    in_range,
    index_bits,
    one_of,
    packed_size,
    register,
)


def _need(meta: Meta, key: str, lo: float, hi: float) -> Any:
    v = meta.get(key)
    if v is None:
        raise ValueError(f"meta.{key} is missing")
    if not lo <= v <= hi:
        raise ValueError(f"meta.{key}={v} is out of range {lo:g}..{hi:g}")
    return v


# --- identity and casts ---------------------------------------------------------------------------
@register("fp32")
class Fp32(FloatStage):
    """Raw float32: what Flower sends. Lossless; also carries values other stages leave over."""

    lossless = True

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        if not ctx.finite and not np.isfinite(x).all():
            raise ValueError("values must be finite (NaN or Inf found)")
        return Encoded({}, [x])

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        return [Field("data", "<f4", n, finite=True)], 0

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        return arrays[0]


class _Half(FloatStage):
    exp_mask: ClassVar[int] = 0
    limit: ClassVar[str] = ""

    def _to(self, kern: ModuleType, x: F32) -> NDArray[np.uint16]:
        raise NotImplementedError

    def _from(self, kern: ModuleType, h: NDArray[np.uint16]) -> F32:
        raise NotImplementedError

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        h = self._to(ctx.kern, x)
        if ((h & self.exp_mask) == self.exp_mask).any():
            raise ValueError(f"values are not finite in {self.name} (NaN/Inf, or |x| > {self.limit})")
        return Encoded({}, [h])

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        return [Field("data", "<u2", n)], 0

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        h = arrays[0]
        if ((h & self.exp_mask) == self.exp_mask).any():
            raise ValueError(f"data holds a NaN/Inf {self.name} pattern")
        return self._from(kern, h)


@register("fp16")
class Fp16(_Half):
    """IEEE binary16, round to nearest even; refuses |x| > 65504 rather than send Inf."""

    exp_mask = 0x7C00
    limit = "65504"

    def _to(self, kern: ModuleType, x: F32) -> NDArray[np.uint16]:
        h: NDArray[np.uint16] = kern.to_float16(x)
        return h

    def _from(self, kern: ModuleType, h: NDArray[np.uint16]) -> F32:
        x: F32 = kern.from_float16(h)
        return x


@register("bf16")
class Bf16(_Half):
    """bfloat16 (float32 range, 8 significant bits), round to nearest even."""

    exp_mask = 0x7F80
    limit = "3.39e38"

    def _to(self, kern: ModuleType, x: F32) -> NDArray[np.uint16]:
        h: NDArray[np.uint16] = kern.to_bfloat16(x)
        return h

    def _from(self, kern: ModuleType, h: NDArray[np.uint16]) -> F32:
        x: F32 = kern.from_bfloat16(h)
        return x


# --- uniform quantization -------------------------------------------------------------------------
@register("quant")
class Quant(FloatStage):
    """b-bit uniform quantization, one (min, step) per bucket; nearest or stochastic rounding."""

    params: ClassVar[tuple[Param, ...]] = (
        Param("bits", int, positional=True, check=in_range(1, 8)),
        Param("bucket", int, 512, check=in_range(1, 1 << 30)),
        Param("stochastic", bool, False),
    )

    @property
    def _stochastic(self) -> bool:
        return bool(self.args["stochastic"])

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        a = self.args
        packed, lo, step = ctx.kern.quantize(x, a["bits"], a["bucket"], self._stochastic, ctx.seed)
        return Encoded({}, [packed, lo, step])

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        bits, bucket = self.args["bits"], self.args["bucket"]
        nb = -(-n // bucket)
        return [
            Field("packed", "u1", packed_size(n, bits), symbol_bits=bits, symbols=n),
            Field("lo", "<f4", nb, finite=True),
            Field("step", "<f4", nb, finite=True),
        ], 0

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        packed, lo, step = arrays
        x: F32 = kern.dequantize(packed, lo, step, n, self.args["bits"], self.args["bucket"])
        return x


@register("qsgd")
class Qsgd(Quant):
    """QSGD-style: b-bit stochastic (unbiased) rounding in buckets of 512 by default."""

    params = (
        Param("bits", int, positional=True, check=in_range(1, 8)),
        Param("bucket", int, 512, check=in_range(1, 1 << 30)),
    )

    @property
    def _stochastic(self) -> bool:
        return True


# --- sign ------------------------------------------------------------------------------------------
@register("sign")
class Sign(FloatStage):
    """1 bit per value (sign) and one scale, the mean |x| (signSGD with a scale)."""

    kernel_ef = True
    meta_schema: ClassVar[Mapping[str, type]] = {"scale": float}

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        packed, scale = ctx.kern.sign_encode(x, ctx.residual)
        return Encoded({"scale": float(scale)}, [packed])

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        _need(meta, "scale", 0.0, 3.4e38)
        return [Field("packed", "u1", packed_size(n, 1), symbol_bits=1, symbols=n)], 0

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        x: F32 = kern.sign_decode(arrays[0], n, float(meta["scale"]))
        return x


@register("efsign")
class EfSign(Sign):
    """sign with error feedback (EF-signSGD, Karimireddy et al. 2019) on by default."""

    default_ef = True


# --- top-k -----------------------------------------------------------------------------------------
# How the kept indices travel. Top-k gaps of a dense delta are near-geometric, and Rice at its
# best b comes within ~1 % of their entropy while a varint spends 8 bits on every gap below 128;
# zstd cannot close that gap on the ~1-2 kB index fields of one update. But Rice loses badly to
# varints on runs of neighbours far apart (one b fits neither the 1-gaps nor the jumps), so the
# default, `auto`, sends per tensor whichever is shorter: the metadata says which, at no cost on
# the wire (tools/bench_index_coding.py, docs/codecs.md).
IDX_PARAM = Param("idx", str, "auto", check=one_of("auto", "rice", "varint"))
RICE_MAX_PARAM = 31


@register("topk")
class TopK(FloatStage):
    """Keep the fraction ``frac`` of values of largest magnitude (at least one); the kept values go
    on to the next float stage. The gaps between kept indices travel Golomb-Rice coded with the
    parameter that makes them shortest (``idx=rice``; ``rb`` in the metadata) or as LEB128
    varints (``idx=varint``, what every payload without ``rb`` holds); ``idx=auto``, the default,
    takes the shorter of the two per tensor."""

    params: ClassVar[tuple[Param, ...]] = (
        Param("frac", float, positional=True, check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
        IDX_PARAM,
    )
    terminal = False
    kernel_ef = True
    reports_kept = True
    replaces_state = True
    # rb last: the compact form lists the values in this order, so k and ib keep their places
    meta_schema: ClassVar[Mapping[str, type]] = {"k": int, "ib": int, "rb": int}

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        n = x.size
        k = min(n, max(1, math.ceil(self.args["frac"] * n)))
        if ctx.residual is None:
            idx, vals = ctx.kern.topk(x, k)
        else:
            # The new residual in a new array while the kernel gathers: the state is only read,
            # so the pipeline need not copy it first (replaces_state).
            idx, vals, ctx.residual = ctx.kern.topk_ef(x, k, ctx.residual, residual_out=ctx.spare_residual)
        return self._indices(ctx.kern, idx, vals)

    def _indices(self, kern: ModuleType, idx: NDArray[np.uint32], vals: F32) -> Encoded:
        mode = self.args["idx"]
        k = int(idx.size)
        if mode != "varint":
            b = kern.rice_best_param(idx)
            rice = kern.rice_encode_indices(idx, b)
            # Every varint takes a byte at least, so Rice codes of k bytes or fewer are the shorter
            # (ties go to Rice) without coding the varints at all: the usual case, a pass saved.
            varint = None if mode == "rice" or rice.size <= k else kern.delta_encode_indices(idx)
            if varint is None or rice.size <= varint.size:
                return Encoded({"k": k, "ib": int(rice.size), "rb": int(b)}, [rice], vals, kept=idx)
        else:
            varint = kern.delta_encode_indices(idx)
        return Encoded({"k": k, "ib": int(varint.size)}, [varint], vals, kept=idx)

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        # The metadata, not the recipe, says how the indices are coded: a payload encoded before
        # `idx` existed has no rb and varints under the very same recipe text, and still decodes.
        k = _need(meta, "k", 0, n)
        if "rb" not in meta:
            ib = _need(meta, "ib", k, 5 * k)
        else:
            b = _need(meta, "rb", 0, RICE_MAX_PARAM)
            # k codes of b + 1 bits at least; their unary parts add at most sum(gap - 1) >> b
            # bits, and the gaps sum to the last index + 1 <= n.
            ib = _need(meta, "ib", -(-k * (b + 1) // 8), -(-(k * (b + 1) + ((n - k) >> b)) // 8))
        return [Field("index", "u1", ib)], k

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        assert leftover is not None
        if "rb" in meta:
            idx = kern.rice_decode_indices(arrays[0], int(meta["k"]), int(meta["rb"]))
        else:
            idx = kern.delta_decode_indices(arrays[0], int(meta["k"]))
        if idx.size and int(idx[-1]) >= n:
            raise ValueError(f"index {int(idx[-1])} is out of range for {n} values")
        out = np.zeros(n, np.float32)
        out[idx] = leftover
        return out


@register("dgc")
class Dgc(TopK):
    """Deep Gradient Compression (Lin et al., ICLR 2018): top-k of an accumulated *velocity* with
    momentum correction and factor masking. Per tensor the sender keeps a momentum u and the
    residual v: u = m·u + x, v = v + u, the k largest |v| are sent, and both u and v are zeroed
    where they were sent (factor masking, so a sent coordinate's stale momentum does not push it
    again). ``warmup`` rounds of exponentially decreasing density ease the start: DGC's 25 %,
    6.25 %, ... until ``frac`` (``ramp=dgc``), or from 25 % down to ``frac`` in equal ratios over
    all ``warmup`` rounds (``ramp=geometric``). Error feedback is always on: the residual is v
    itself, and when later stages quantize the sent values their error stays in v too."""

    params = (
        Param("frac", float, positional=True, check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
        Param("momentum", float, 0.5, check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)"),
        Param("warmup", int, 0, check=in_range(0, 1000)),
        Param("ramp", str, "dgc", check=one_of("dgc", "geometric")),
        IDX_PARAM,
    )
    default_ef = True
    first_only = True
    keeps_momentum = True
    replaces_state = True

    def validate_args(self) -> None:
        if not self.ef:
            raise ValueError("stage 'dgc': its residual is the accumulated velocity; +noef is not allowed")

    def density(self, round_: int) -> float:
        """The fraction sent at the sender's ``round_``-th encode (0-based), warm-up included."""
        frac = float(self.args["frac"])
        warmup = int(self.args["warmup"])
        if round_ >= warmup:
            return frac
        if self.args["ramp"] == "geometric":
            # DGC's factor 4 per round reaches a density of 1-3 % after two rounds whatever the
            # warm-up's length; spreading the same 25 % -> frac descent over every warm-up round
            # keeps more of the early rounds, where a non-IID federation settles, near dense (the
            # digits demo at 3 %, 16 seeds: +0.45 -> +0.12 points; docs/algorithms.md).
            return max(frac, 0.25 * float((frac / 0.25) ** (round_ / warmup)))
        return max(frac, 0.25 ** (round_ + 1))

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        if ctx.momentum is None or ctx.residual is None:
            raise ValueError("dgc needs the codec state's momentum and residual for this tensor")
        n = x.size
        k = min(n, max(1, math.ceil(self.density(ctx.round) * n)))
        # One fused kernel: u = m·u + x, v += u, the k largest |v|, u and v zeroed where sent. It
        # reads the state and writes new arrays, so the pipeline need not copy the state first.
        idx, vals, ctx.momentum, ctx.residual = ctx.kern.dgc_select(
            x,
            ctx.momentum,
            ctx.residual,
            float(self.args["momentum"]),
            k,
            momentum_out=ctx.spare_momentum,
            residual_out=ctx.spare_residual,
        )
        return self._indices(ctx.kern, idx, vals)


# --- GCC -------------------------------------------------------------------------------------------
@register("gcc")
class Gcc(FloatStage):
    """Gradient compression via centroid: k-means of the values into k centroids; the fraction
    ``rho`` nearest their centroid travel as centroid ids, the others go on to the next float stage
    (float32 by default). Error feedback is on by default (``+noef`` turns it off)."""

    params = (
        Param("k", int, 16, positional=True, check=in_range(1, 256)),
        Param("rho", float, 0.5, check=in_range(0.0, 1.0)),
        Param("iters", int, 20, check=in_range(1, 1000)),
        Param("method", str, "hist", check=one_of("hist", "optimal", "lloyd")),
    )
    terminal = False
    kernel_ef = True
    default_ef = True
    replaces_state = True
    meta_schema: ClassVar[Mapping[str, type]] = {"k": int, "m": int}

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        k = min(self.args["k"], x.size)
        a = self.args
        if ctx.residual is None:
            cents, mask, ids, exact = ctx.kern.gcc_encode(
                x, k, a["rho"], None, a["iters"], ctx.seed, method=a["method"]
            )
        else:
            # The state's residual is only read and the new one written into a retired array, so
            # the pipeline need not copy the state first (replaces_state).
            cents, mask, ids, exact, ctx.residual = ctx.kern.gcc_encode_ef(
                x,
                k,
                a["rho"],
                ctx.residual,
                a["iters"],
                ctx.seed,
                method=a["method"],
                residual_out=ctx.spare_residual,
            )
        # exact is acc itself, which the kernel refused unless finite.
        meta: Meta = {"k": int(cents.size), "m": int(exact.size)}
        return Encoded(meta, [cents, mask, ids], exact, leftover_finite=True)

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        k = _need(meta, "k", 1, 256)
        m = _need(meta, "m", 0, n)
        b = index_bits(k)
        return [
            Field("centroids", "<f4", k, finite=True),
            Field("mask", "u1", packed_size(n, 1), symbol_bits=1, symbols=n),
            Field("ids", "u1", packed_size(n - m, b), symbol_bits=b, symbols=n - m),
        ], m

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        assert leftover is not None
        cents, mask, ids = arrays
        replaced = int(np.unpackbits(mask, count=n, bitorder="little").sum())
        if replaced != n - int(meta["m"]):
            raise ValueError(f"mask marks {replaced} replaced values but {n - int(meta['m'])} ids were sent")
        x: F32 = kern.gcc_decode(cents, mask, ids, leftover, n)
        return x


# --- k-means weight sharing / coreset --------------------------------------------------------------
@register("coreset")
class Coreset(FloatStage):
    """Weight sharing (Lu et al.'s parameter clustering): 1-D k-means codebook + ceil(log2 k)-bit
    labels. The codebook is itself quantized (``codebook=fp16`` or ``8`` bits) and the labels are
    reassigned to the quantized codebook, so the pair is optimised jointly (joint coreset +
    quantization)."""

    params = (
        Param("k", int, positional=True, check=in_range(1, 256)),
        Param("codebook", str, "fp16", check=one_of("fp32", "fp16", "8")),
        Param("method", str, "hist", check=one_of("hist", "optimal", "lloyd")),
    )
    meta_schema: ClassVar[Mapping[str, type]] = {"k": int, "lo": float, "step": float}

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        kern = ctx.kern
        k = min(self.args["k"], x.size)
        # Centroids only: the labels come from the quantized codebook below.
        cents = kern.kmeans_centroids(x, k, self.args["method"], seed=ctx.seed)
        cb = self.args["codebook"]
        meta: Meta = {"k": k}
        if cb == "fp32":
            book: NDArray[Any] = cents
            qbook = cents
        elif cb == "fp16":
            h = kern.to_float16(cents)
            if ((h & 0x7C00) == 0x7C00).any():
                raise ValueError("a centroid exceeds the float16 range; use codebook=fp32 or 8")
            # Rounding may merge centroids; kmeans_pack wants a strictly ascending codebook. The
            # unique values are float16 values already, so they are the decoder's codebook as they are.
            qbook = np.unique(kern.from_float16(h))
            book = kern.to_float16(qbook)
        else:
            codes, lo, step = kern.quantize(cents, 8, max(1, k))
            book = np.unique(codes)
            meta["lo"], meta["step"] = float(lo[0]), float(step[0])
            qbook = self._dequant8(kern, book, meta)
        meta["k"] = int(book.size)
        return Encoded(meta, [book, kern.kmeans_pack(x, qbook, index_bits(book.size))])

    @staticmethod
    def _dequant8(kern: ModuleType, codes: NDArray[np.uint8], meta: Meta) -> F32:
        k = codes.size
        lo = np.array([meta["lo"]], np.float32)
        step = np.array([meta["step"]], np.float32)
        x: F32 = kern.dequantize(np.ascontiguousarray(codes), lo, step, k, 8, k)
        return x

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        k = _need(meta, "k", 1, 256)
        cb = self.args["codebook"]
        if cb == "8":
            _need(meta, "lo", -3.4e38, 3.4e38)
            _need(meta, "step", 0.0, 3.4e38)
        book = {
            "fp32": Field("codebook", "<f4", k, finite=True),
            "fp16": Field("codebook", "<u2", k),
            "8": Field("codebook", "u1", k),
        }[cb]
        b = index_bits(k)
        return [book, Field("labels", "u1", packed_size(n, b), symbol_bits=b, symbols=n)], 0

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        book, packed = arrays
        k = int(meta["k"])
        cb = self.args["codebook"]
        if cb == "fp32":
            qbook = book
        elif cb == "fp16":
            if ((book & 0x7C00) == 0x7C00).any():
                raise ValueError("codebook holds a NaN/Inf float16 pattern")
            qbook = kern.from_float16(book)
        else:
            qbook = self._dequant8(kern, book, meta)
        labels = kern.unpack_bits(packed, n, index_bits(k))
        if labels.size and int(labels.max()) >= k:
            raise ValueError(f"label {int(labels.max())} is out of range for a codebook of {k}")
        out: F32 = qbook[labels]
        return out


@register("kmeans")
class KMeans(Coreset):
    """Plain weight sharing: 1-D k-means with a float32 codebook (``coreset`` with codebook=fp32)."""

    params = (
        Param("k", int, positional=True, check=in_range(1, 256)),
        Param("codebook", str, "fp32", check=one_of("fp32", "fp16", "8")),
        Param("method", str, "hist", check=one_of("hist", "optimal", "lloyd")),
    )


# --- loss-aware quantization -----------------------------------------------------------------------
@register("laq")
class Laq(FloatStage):
    """Hou & Kwok's loss-aware quantization: m-bit symmetric levels and one scale alpha fitted under
    the per-value curvature weight d (e.g. sqrt of Adam's v + eps) passed as ``curvature``."""

    params = (Param("bits", int, positional=True, check=in_range(1, 8)),)
    first_only = True
    needs_curvature = True
    meta_schema: ClassVar[Mapping[str, type]] = {"alpha": float}

    def _bits(self, meta: Meta) -> int:
        return int(self.args["bits"])

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        if ctx.curvature is None:
            raise ValueError("laq needs a curvature array for this tensor")
        bits = self.args["bits"] if ctx.bits is None else ctx.bits
        # alpha given: the allocation fitted it on these very values, so only the codes remain
        packed, alpha, _ = ctx.kern.laq_quantize(x, ctx.curvature, bits, alpha=ctx.alpha)
        return Encoded({"alpha": float(alpha)}, [packed])

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        _need(meta, "alpha", -3.4e38, 3.4e38)
        b = self._bits(meta)
        return [Field("packed", "u1", packed_size(n, b), symbol_bits=b, symbols=n)], 0

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        x: F32 = kern.laq_dequantize(arrays[0], n, self._bits(meta), float(meta["alpha"]))
        return x


def _choices(v: str) -> str | None:
    try:
        bits = [int(b) for b in v.split("/")] if v else []
    except ValueError:
        return "must be bit widths separated by '/', e.g. 0/2/4/8"
    return None if (all(0 <= b <= 8 for b in bits) and any(bits)) or not v else "must be bit widths in 0..8"


@register("alq")
class Alq(Laq):
    """SpaceDML's adaptive loss-aware quantization: LAQ per tensor with the bit width chosen across
    tensors (ALQ-style, least loss-important bits dropped first) so the payload fits the
    ``budget_bytes`` given to encode. ``choices`` lists the allowed widths (default 0..8); a tensor
    given 0 bits is not sent."""

    params = (Param("choices", str, "", positional=True, check=_choices),)
    needs_budget = True
    meta_schema: ClassVar[Mapping[str, type]] = {"alpha": float, "bits": int}

    @property
    def choices(self) -> tuple[int, ...] | None:
        text = self.args["choices"]
        return tuple(sorted({int(b) for b in text.split("/")})) if text else None

    def _bits(self, meta: Meta) -> int:
        return int(meta["bits"])

    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        if ctx.bits is None:
            raise ValueError("alq needs bits chosen by the allocation (pass budget_bytes to encode)")
        enc = super().encode(x, ctx)
        enc.meta["bits"] = ctx.bits
        return enc

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        _need(meta, "bits", 1, 8)
        return super().layout(meta, n)


# --- lossless byte stage ---------------------------------------------------------------------------
# One compressor per thread and level: making one allocates a zstd context, ~9 us, as long as
# compressing a default-recipe tensor's 100-200 B and about half the time for its ~70 kB. A
# ZstdCompressor must not be used by two threads at once, hence per thread (module-level, so stages
# stay picklable).
_ZSTD = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_ZSTD, "by_level", None)
    if cache is None:
        cache = _ZSTD.by_level = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


@register("zstd")
class Zstd(Stage):
    """Zstandard over the finished bytes of a tensor (all its arrays, concatenated)."""

    params = (Param("level", int, 3, positional=True, check=in_range(1, 19)),)
    kind = "bytes"
    lossless = True

    def compress(self, raw: bytes) -> bytes:
        out: bytes = _compressor(self.args["level"]).compress(raw)
        return out

    def decompress(self, blob: bytes, raw_size: int) -> bytes:
        # The frame header states the decompressed size; check it before zstd allocates anything,
        # so a small frame claiming gigabytes (a zip bomb) is refused up front.
        try:
            declared = zstandard.frame_content_size(blob)
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a zstd frame ({exc})") from None
        if declared != raw_size:
            raise ValueError(f"zstd frame declares {declared} bytes, the layout needs {raw_size}")
        try:
            dobj = zstandard.ZstdDecompressor().decompressobj()
            raw: bytes = dobj.decompress(blob)
        except zstandard.ZstdError as exc:
            raise ValueError(f"corrupt zstd frame ({exc})") from None
        if len(raw) != raw_size or not dobj.eof or dobj.unused_data:
            raise ValueError(f"zstd frame is truncated or has trailing bytes ({len(raw)} of {raw_size})")
        return raw
