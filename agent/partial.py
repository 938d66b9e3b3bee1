"""What an agent sends under a byte budget (SpaceDML's partial weight averaging, agent side).

The delta is cut into blocks (``block`` elements of a flattened tensor; 0: whole tensors). Each
block is scored by how much it changed, ‖Δ_b‖² (or ‖g ⊙ Δ_b‖² with a per-coordinate importance g,
e.g. a loss curvature estimate such as √(Adam v), for a loss-weighted choice), and blocks are taken
in order of score per byte until the budget is spent, at ``bytes_per_value`` (what the codec spends
per value: 4 for float32, 2 for fp16, ~bits/8 for b-bit quantization) plus ``overhead_bytes`` per
tensor sent. With equal-sized blocks this picks exactly the largest-change blocks that fit; with
unequal sizes it is the greedy knapsack by score per byte, not an exact knapsack.

The ground (``PartialAverage``) averages each block over the agents that sent it. Selected blocks
travel as the tensor with unselected blocks set to zero plus the mask (``masks``); over a wire that
carries no masks the ground's ``zero_is_unsent`` recovers them from the zeros, which costs little
only with a codec that encodes runs of zeros cheaply (entropy stage, sparse top-k).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.arrays import F32
from orbitfl.wire.compact import FORM, Layout, compact_payload
from orbitfl.wire.payload import encode_payload, new_codec_state

Mask = npt.NDArray[np.bool_]


@dataclass
class Selection:
    """The chosen blocks: per tensor a bool mask over its blocks (tensors absent: nothing sent)."""

    block: int
    masks: dict[str, Mask] = field(default_factory=dict)
    values: int = 0  # values sent
    bytes: float = 0.0  # estimated bytes at the given bytes_per_value and overhead

    def tensors(self, delta: Mapping[str, npt.NDArray[Any]]) -> dict[str, F32]:
        """The tensors to send: selected tensors only, unselected blocks zeroed."""
        out: dict[str, F32] = {}
        for name, m in self.masks.items():
            d = np.asarray(delta[name], np.float32)
            if bool(m.all()):
                out[name] = np.array(d, copy=True)
                continue
            flat = d.reshape(-1)
            keep = _expand(m, flat.size, self.block)
            out[name] = np.where(keep, flat, np.float32(0)).astype(np.float32).reshape(d.shape)
        return out


def _n_blocks(size: int, block: int) -> int:
    return 1 if block <= 0 or size == 0 else -(-size // block)


def _expand(m: Mask, size: int, block: int) -> Mask:
    if block <= 0:
        return np.full(size, bool(m[0]))
    out: Mask = np.repeat(m, block)[:size]
    return out


def block_scores(
    delta: Mapping[str, npt.NDArray[Any]],
    block: int = 0,
    importance: Mapping[str, npt.NDArray[Any]] | None = None,
) -> dict[str, npt.NDArray[np.float64]]:
    """Per tensor, per block: Σ (g·Δ)² over the block (g = importance, 1 if absent)."""
    if block < 0:
        raise ValueError(f"block must be >= 0 (0: whole tensors), got {block}")
    out: dict[str, npt.NDArray[np.float64]] = {}
    for name, d in delta.items():
        x = np.asarray(d, np.float64).reshape(-1)
        if importance is not None and name in importance:
            g = np.asarray(importance[name], np.float64)
            if g.shape != np.shape(d):
                raise ValueError(f"importance of {name!r} has shape {g.shape}, the delta {np.shape(d)}")
            x = x * g.reshape(-1)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"delta (or importance) of {name!r} holds NaN or Inf")
        sq = x * x
        nb = _n_blocks(x.size, block)
        if block <= 0:
            out[name] = np.array([sq.sum()])
        else:
            padded = np.zeros(nb * block)
            padded[: x.size] = sq
            out[name] = padded.reshape(nb, block).sum(axis=1)
    return out


def choose_blocks(
    delta: Mapping[str, npt.NDArray[Any]],
    budget_bytes: float,
    bytes_per_value: float,
    *,
    block: int = 0,
    overhead_bytes: float = 0.0,
    importance: Mapping[str, npt.NDArray[Any]] | None = None,
    always: Iterable[str] = (),
) -> Selection:
    """The blocks to send so the estimated bytes stay within ``budget_bytes``.

    ``always``: tensors sent whole before anything else (e.g. a small router in EMS-FL); if they
    alone exceed the budget that is an error, not a silent overrun.
    """
    if not (math.isfinite(bytes_per_value) and bytes_per_value > 0):
        raise ValueError(f"bytes_per_value must be a finite number > 0, got {bytes_per_value}")
    if not (math.isfinite(budget_bytes) and budget_bytes >= 0):
        raise ValueError(f"budget_bytes must be a finite number >= 0, got {budget_bytes}")
    if overhead_bytes < 0:
        raise ValueError(f"overhead_bytes must be >= 0, got {overhead_bytes}")
    scores = block_scores(delta, block, importance)
    sel = Selection(block)
    spent = 0.0

    def take(name: str, idx: int | None) -> None:
        nonlocal spent
        size = int(np.size(delta[name]))
        nb = len(scores[name])
        if name not in sel.masks:
            sel.masks[name] = np.zeros(nb, dtype=bool)
            spent += overhead_bytes
        if idx is None:
            n_new = int(size - _expand(sel.masks[name], size, block).sum())
            sel.masks[name][:] = True
        else:
            n_new = _block_len(size, block, idx)
            sel.masks[name][idx] = True
        sel.values += n_new
        spent += n_new * bytes_per_value

    for name in always:
        if name not in delta:
            raise ValueError(f"'always' names {name!r}, which the delta does not carry")
        take(name, None)
    if spent > budget_bytes:
        raise ValueError(
            f"the tensors in 'always' need {spent:.0f} bytes, more than the budget of {budget_bytes:.0f}"
        )
    cands: list[tuple[float, float, str, int]] = []
    for name, sc in scores.items():
        if name in sel.masks:
            continue
        size = int(np.size(delta[name]))
        for i, s in enumerate(sc.tolist()):
            cost = _block_len(size, block, i) * bytes_per_value
            if s > 0 and cost > 0:
                cands.append((s / cost, s, name, i))
    # Highest change per byte first; ties broken by name and index so the choice is reproducible.
    cands.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))
    for _, _, name, i in cands:
        size = int(np.size(delta[name]))
        cost = _block_len(size, block, i) * bytes_per_value + (0.0 if name in sel.masks else overhead_bytes)
        if spent + cost <= budget_bytes:
            take(name, i)
    sel.bytes = spent
    return sel


def measure_bytes_per_value(recipe: str, sample: Mapping[str, npt.NDArray[Any]]) -> float:
    """Bytes the codec ``recipe`` spends per value on ``sample`` (e.g. a previous delta): the
    encoded UPDATE payload's msgpack size, in the compact form the agent sends, over the number of
    values. Uses a fresh codec state, so the agent's error-feedback memory is not touched.
    ValueError for a recipe the codec refuses."""
    import msgpack

    n = sum(int(np.size(v)) for v in sample.values())
    if n == 0:
        raise ValueError("sample holds no values")
    payload = encode_payload(recipe, sample, new_codec_state(recipe))
    payload = compact_payload(payload, recipe, Layout.of_tensors(sample), FORM) or payload
    return len(msgpack.packb(payload, use_bin_type=True)) / n


def _block_len(size: int, block: int, i: int) -> int:
    if block <= 0:
        return size
    return min(block, size - i * block)
