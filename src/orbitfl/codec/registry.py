"""The stage interface and the registry of named stages.

A codec is one :class:`Stage` subclass registered under a name (``@register("quant")``) plus the
kernel it calls. The recipe parser (:mod:`orbitfl.codec.recipe`) builds stages from text through
this registry; the pipeline drives them; the payload validator asks them for the layout of what they
put on the wire, so a new stage gets parsing, validation, zstd and entropy reporting for free.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray

from orbitfl.arrays import F32

Meta = dict[str, int | float]


@dataclass(frozen=True)
class Param:
    """One argument a stage accepts in a recipe: ``quant:4,bucket=256,stochastic``.

    ``positional`` params may be given without their name, in declaration order; bool params may be
    given as a bare flag. ``check`` returns an error text for a bad value (None if fine).
    """

    name: str
    kind: type[int] | type[float] | type[bool] | type[str]
    default: Any = None  # None: required
    positional: bool = False
    check: Callable[[Any], str | None] | None = None


def in_range(lo: float, hi: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if lo <= v <= hi else f"must be in {lo:g}..{hi:g}"

    return check


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


@dataclass(frozen=True)
class Field:
    """One array a stage puts on the wire: little-endian ``dtype``, ``count`` elements.

    ``symbol_bits`` says how the entropy report reads it: ``symbols`` codes of b bits packed
    LSB-first (b in 1..7), or plain bytes (8).
    """

    name: str
    dtype: str  # "u1", "<u2", "<f4"
    count: int
    symbol_bits: int = 8
    symbols: int = 0  # how many b-bit codes a packed field holds
    finite: bool = False  # float32 values that must be finite

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(self.dtype).itemsize


@dataclass
class EncodeContext:
    """What a float stage may use besides its input vector."""

    kern: ModuleType
    seed: int = 0
    residual: F32 | None = None  # only for the first stage when it updates the residual itself
    curvature: F32 | None = None  # only for the first stage
    bits: int | None = None  # the bit width chosen by ALQ for this tensor
    alpha: float | None = None  # the LAQ scale ALQ's allocation already fitted at those bits
    # only for the first stage when it keeps a momentum (DGC): the sender's per-tensor velocity,
    # owned by the pipeline and updated in place (or replaced, by a stage that replaces_state)
    momentum: F32 | None = None
    round: int = 0  # the sender's encode count (DGC's sparsity warm-up)
    # Retired state arrays of this tensor's size that nothing else references, which a stage that
    # replaces_state may overwrite as its new residual / momentum instead of allocating (None:
    # allocate). Only the pipeline passes them, and only when it holds the last reference.
    spare_residual: F32 | None = None
    spare_momentum: F32 | None = None
    # The input is known finite: it is the previous stage's leftover, which that stage's kernel
    # already refused unless finite (Encoded.leftover_finite). Never set for the first stage.
    finite: bool = False


@dataclass
class Encoded:
    """A float stage's output: scalar metadata, arrays in layout order, floats for the next stage."""

    meta: Meta
    arrays: list[NDArray[Any]]
    leftover: F32 | None = None
    # A sparsifying stage (top-k) says where in its input the leftover values came from, so error
    # feedback can fold the later stages' error into those k places instead of decoding all n.
    kept: NDArray[np.uint32] | None = None
    # The leftover values were checked finite by the stage's kernel, so the next stage may skip
    # its own check (a later stage still checks what it computes).
    leftover_finite: bool = False


@dataclass
class Stage:
    """A step of a recipe. Float stages turn a float32 vector into arrays (and maybe leftover floats
    for the next float stage); byte stages transform the bytes of those arrays."""

    name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()
    kind: ClassVar[Literal["float", "bytes"]] = "float"
    terminal: ClassVar[bool] = True  # consumes its whole input: nothing left for a next float stage
    lossless: ClassVar[bool] = False
    kernel_ef: ClassVar[bool] = False  # its kernel updates an error-feedback residual in place
    # Encoded.kept names where its leftover came from, and its kernel's residual is the input at the
    # dropped places and 0 at the kept ones (top-k): the pipeline then folds the later stages'
    # error into the kept places only.
    reports_kept: ClassVar[bool] = False
    default_ef: ClassVar[bool] = False
    first_only: ClassVar[bool] = False  # needs the whole tensor (curvature, budget)
    needs_curvature: ClassVar[bool] = False
    needs_budget: ClassVar[bool] = False  # sizes its output to the encode's budget_bytes
    keeps_momentum: ClassVar[bool] = False  # the codec state holds a momentum for it (DGC)
    # its encode leaves new arrays in ctx.residual and ctx.momentum instead of updating them in
    # place, so the pipeline hands it the state's own arrays (read only) rather than copies
    replaces_state: ClassVar[bool] = False
    meta_schema: ClassVar[Mapping[str, type]] = {}

    args: dict[str, Any] = field(default_factory=dict)
    ef: bool = False

    def spec(self) -> str:
        """Canonical text of this stage, parseable back to an equal stage."""
        parts: list[str] = []
        for p in self.params:  # positional params are declared first, so they print first
            v = self.args[p.name]
            if p.kind is bool:
                if v != p.default:
                    parts.append(p.name if v else f"{p.name}=0")
            elif p.positional:
                if v != "" or p.default != "":  # an empty default means "the kernel's default"
                    parts.append(_fmt(v))
            elif v != p.default:
                parts.append(f"{p.name}={_fmt(v)}")
        text = self.name + (":" + ",".join(parts) if parts else "")
        if self.ef != self.default_ef:
            text += "+ef" if self.ef else "+noef"
        return text

    # --- float stages -------------------------------------------------------------------------------
    def encode(self, x: F32, ctx: EncodeContext) -> Encoded:
        raise NotImplementedError(f"{self.name} is not a float stage")

    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]:
        """The arrays this stage wrote for an n-value input with this metadata, and how many float
        values it passed on. Raises ValueError (naming the key) for metadata that cannot be right."""
        raise NotImplementedError(f"{self.name} is not a float stage")

    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32:
        raise NotImplementedError(f"{self.name} is not a float stage")

    # --- byte stages --------------------------------------------------------------------------------
    def compress(self, raw: bytes) -> bytes:
        raise NotImplementedError(f"{self.name} is not a byte stage")

    def decompress(self, blob: bytes, raw_size: int) -> bytes:
        raise NotImplementedError(f"{self.name} is not a byte stage")


@dataclass
class FloatStage(Stage, ABC):
    """Marker base for float stages (for readability of the stage modules)."""

    @abstractmethod
    def encode(self, x: F32, ctx: EncodeContext) -> Encoded: ...

    @abstractmethod
    def layout(self, meta: Meta, n: int) -> tuple[list[Field], int]: ...

    @abstractmethod
    def decode(
        self, meta: Meta, arrays: list[NDArray[Any]], n: int, leftover: F32 | None, kern: ModuleType
    ) -> F32: ...


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


REGISTRY: dict[str, type[Stage]] = {}


def register(name: str) -> Callable[[type[Stage]], type[Stage]]:
    """Class decorator: make a stage available in recipes under ``name``."""

    def deco(cls: type[Stage]) -> type[Stage]:
        if name in REGISTRY:
            raise ValueError(f"codec stage {name!r} is already registered")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return deco


def packed_size(n: int, bits: int) -> int:
    return (n * bits + 7) // 8


def index_bits(k: int) -> int:
    """Bits of a centroid id for k centroids: ceil(log2 k), at least 1."""
    return max(1, math.ceil(math.log2(k))) if k > 1 else 1
