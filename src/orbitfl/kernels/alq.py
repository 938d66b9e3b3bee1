"""Adaptive bit allocation across tensors under a byte budget (ALQ-style), over LAQ.

SpaceDML's "adaptive loss-aware quantization" quantizes each tensor with loss-aware quantization
(Hou & Kwok; ``laq_quantize``) and adapts the bit width to the link. We choose the widths the way
ALQ (Qu et al., CVPR 2020) prunes bits: start every tensor at its highest width and repeatedly
remove the bits whose removal costs the least curvature-weighted loss per byte saved, until the
update fits the budget. Width 0 means "tensor not sent this round"; its loss is sum d * x^2.

Loss proxy of tensor t at m bits: the weighted error sum d * (x - x_hat)^2 LAQ reports, with d the
same curvature weight LAQ uses (e.g. sqrt(Adam v) + eps): a diagonal second-order estimate of the
loss increase.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from orbitfl.kernels import backend as kernel_backend

__all__ = ["OVERHEAD_BYTES", "allocate_bits", "tensor_bytes", "weighted_errors"]

from orbitfl.arrays import F32

# Per sent tensor: its float32 scale alpha plus one byte for the bit width. A tensor at 0 bits is
# not sent and costs nothing; naming which tensors travel is the payload's job, not counted here.
OVERHEAD_BYTES = 5
MAX_BITS = 8


def tensor_bytes(n: int, bits: int) -> int:
    """Bytes tensor of n values costs at `bits` bits: ceil(n*bits/8) + OVERHEAD_BYTES (0 if bits is 0)."""
    if bits == 0:
        return 0
    return (n * bits + 7) // 8 + OVERHEAD_BYTES


def _choices(choices: Any) -> list[int]:
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise TypeError(f"choices must be a sequence of ints, got {type(choices).__name__}")
    out: set[int] = set()
    for c in choices:
        if isinstance(c, bool):
            raise TypeError("choices must hold ints, got bool")
        try:
            m = operator.index(c)
        except TypeError:
            raise TypeError(f"choices must hold ints, got {type(c).__name__}") from None
        if not 0 <= m <= MAX_BITS:
            raise ValueError(f"choices must be in 0..{MAX_BITS}, got {m}")
        out.add(m)
    if not out:
        raise ValueError("choices must not be empty")
    return sorted(out)


def _tensors(x: Mapping[str, F32], d: Mapping[str, F32]) -> list[str]:
    missing_d = sorted(set(x) - set(d))
    missing_x = sorted(set(d) - set(x))
    if missing_d or missing_x:
        raise ValueError(f"x and d must name the same tensors: only in x {missing_d}, only in d {missing_x}")
    for name in x:
        for what, a in (("x", x[name]), ("d", d[name])):
            if not isinstance(a, np.ndarray):
                raise TypeError(
                    f"{what}[{name!r}] must be a numpy.ndarray of float32, got {type(a).__name__}"
                )
            if a.dtype != np.float32:
                raise TypeError(f"{what}[{name!r}] must have dtype float32, got {a.dtype}")
        if x[name].shape != d[name].shape:
            raise ValueError(f"d[{name!r}] has shape {d[name].shape} but x[{name!r}] has {x[name].shape}")
        dn = d[name]
        if dn.size and not (np.isfinite(dn).all() and (dn > 0).all()):
            raise ValueError(f"d[{name!r}] must be finite and > 0 everywhere")
        if x[name].size and not np.isfinite(x[name]).all():
            raise ValueError(f"x[{name!r}] contains NaN or Inf")
    return list(x)


def weighted_errors(
    x: Mapping[str, F32],
    d: Mapping[str, F32],
    choices: Sequence[int],
    *,
    backend: str = "cpp",
    alphas: dict[str, dict[int, float]] | None = None,
) -> dict[str, dict[int, float]]:
    """errors[t][m] = sum d * (x - x_hat)^2 of tensor t quantized by LAQ at m bits (m = 0: x_hat = 0).

    If ``alphas`` is a dict, alphas[t][m] becomes the scale LAQ fitted: ``laq_quantize(...,
    alpha=alphas[t][m])`` then encodes without fitting again."""
    names = _tensors(x, d)
    widths = _choices(choices)
    kern = kernel_backend(backend)
    table: dict[str, dict[int, float]] = {}
    for name in names:
        xf = np.ascontiguousarray(x[name])
        df = np.ascontiguousarray(d[name])
        # One call for every width: the kernel checks and buckets the tensor once for all of them
        # (width 0, not sent, is sum d * x^2).
        fitted, errors = kern.laq_errors(xf, df, widths)
        table[name] = {m: float(e) for m, e in zip(widths, errors, strict=True)}
        if alphas is not None:
            alphas[name] = {m: float(a) for m, a in zip(widths, fitted, strict=True)}
    return table


def _frontier(n: int, row: dict[int, float]) -> list[tuple[int, int, float]]:
    """(bits, bytes, loss) by bytes, keeping only widths no cheaper width matches or beats in loss.

    A width that costs more and loses at least as much is never worth sending; dropping it makes
    every step of the greedy trade bytes for a positive loss, so a larger budget never ends with
    a larger total loss.
    """
    kept: list[tuple[int, int, float]] = []
    for m in sorted(row):
        b = tensor_bytes(n, m)
        loss = row[m]
        if kept and b == kept[-1][1]:
            if loss < kept[-1][2]:
                kept[-1] = (m, b, loss)
            continue
        if not kept or loss < kept[-1][2]:
            kept.append((m, b, loss))
    return kept


def allocate_bits(
    x: Mapping[str, F32],
    d: Mapping[str, F32],
    budget_bytes: int,
    *,
    choices: Sequence[int] = (0, 1, 2, 3, 4, 5, 6, 7, 8),
    backend: str = "cpp",
    alphas: dict[str, dict[int, float]] | None = None,
) -> dict[str, int]:
    """Bit width per tensor (0 = not sent) so the LAQ-coded update fits budget_bytes.

    Every tensor starts at its highest useful width; then, while the total exceeds the budget,
    the tensor whose next lower width adds the least weighted loss per byte saved steps down
    (ties: the name first in sorted order). ValueError if even the lowest widths do not fit.
    ``alphas``: as in :func:`weighted_errors` (the fitted scale per tensor and width).
    """
    if isinstance(budget_bytes, bool):
        raise TypeError("budget_bytes must be an int, got bool")
    try:
        budget = operator.index(budget_bytes)
    except TypeError:
        raise TypeError(f"budget_bytes must be an int, got {type(budget_bytes).__name__}") from None
    if budget < 0:
        raise ValueError(f"budget_bytes must be >= 0, got {budget}")
    table = weighted_errors(x, d, choices, backend=backend, alphas=alphas)
    chains = {name: _frontier(x[name].size, row) for name, row in table.items()}
    floor_bytes = sum(chain[0][1] for chain in chains.values())
    if floor_bytes > budget:
        lowest = min(_choices(choices))
        raise ValueError(
            f"budget_bytes={budget} is too small: at the lowest width ({lowest} bits) the tensors "
            f"need {floor_bytes} bytes; allow 0 in choices to skip tensors"
        )
    pos = {name: len(chain) - 1 for name, chain in chains.items()}
    total = sum(chain[-1][1] for chain in chains.values())

    heap: list[tuple[float, str]] = []

    def push(name: str) -> None:
        i = pos[name]
        if i > 0:
            hi, lo = chains[name][i], chains[name][i - 1]
            heapq.heappush(heap, ((lo[2] - hi[2]) / (hi[1] - lo[1]), name))

    for name in sorted(chains):
        push(name)
    while total > budget:
        _, name = heapq.heappop(heap)  # never empty: floor_bytes <= budget
        i = pos[name]
        total -= chains[name][i][1] - chains[name][i - 1][1]
        pos[name] = i - 1
        push(name)
    return {name: chains[name][pos[name]][0] for name in x}
