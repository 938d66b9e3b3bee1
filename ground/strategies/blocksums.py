"""Streaming per-block weighted sums: the O(model) accumulator behind partial averaging, FedBuff
and EMS-FL.

Each tensor is cut, flattened, into blocks of ``block`` elements (``block`` = 0: the whole tensor is
one block). Per tensor we keep one float64 sum of model size and, per block, two weight totals:
``w`` (the weights the numerator used, e.g. samples × staleness) and ``n`` (an undiscounted total,
e.g. samples), so a strategy can divide by either: by ``w`` for a weighted mean over the senders,
by ``n`` when a stale update should shrink the step (FedBuff). A block nobody sent has both at 0
and keeps the global value.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.ground.strategies.base import StalenessLimit, Strategy
from orbitfl.ground.strategies.staleness import Staleness
from orbitfl.wire.tensors import TensorDict

F64 = npt.NDArray[np.float64]
CHUNK = 1 << 15  # elements per pass through the float64 scratch (256 KiB)


def n_blocks(size: int, block: int) -> int:
    return 1 if block <= 0 or size == 0 else -(-size // block)


def block_mask_of_nonzero(flat: npt.NDArray[Any], block: int) -> npt.NDArray[np.bool_]:
    """Which blocks hold any non-zero value (the implicit mask of a zero-filled partial delta)."""
    if block <= 0:
        return np.array([bool(np.any(flat != 0))])
    nb = n_blocks(flat.size, block)
    padded = np.zeros(nb * block, dtype=bool)
    padded[: flat.size] = flat != 0
    return np.asarray(padded.reshape(nb, block).any(axis=1), dtype=np.bool_)


class BlockSums:
    """Sums and per-block weights for one round. Not a Strategy: strategies own one."""

    def __init__(self, block: int = 0) -> None:
        if block < 0:
            raise ValueError(f"block must be >= 0 (0: whole tensors), got {block}")
        self.block = block
        self._scratch = np.empty(CHUNK, np.float64)
        self.sum: dict[str, F64] = {}
        self.w: dict[str, F64] = {}
        self.n: dict[str, F64] = {}

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        self.sum = {k: np.zeros(np.shape(v), np.float64) for k, v in global_weights.items()}
        self.w = {k: np.zeros(n_blocks(int(np.size(v)), self.block)) for k, v in global_weights.items()}
        self.n = {k: np.zeros_like(a) for k, a in self.w.items()}

    def check(
        self, delta: Mapping[str, npt.NDArray[Any]], masks: Mapping[str, npt.NDArray[Any]] | None
    ) -> None:
        """Refuse names, shapes and masks that do not fit, before anything is folded in."""
        for name, d in delta.items():
            acc = self.sum.get(name)
            if acc is None:
                raise KeyError(f"tensor {name!r} is not in the model")
            if tuple(np.shape(d)) != acc.shape:
                raise ValueError(f"tensor {name!r} has shape {np.shape(d)}, the model has {acc.shape}")
        for name, m in (masks or {}).items():
            if name not in delta:
                raise ValueError(f"mask for {name!r}, which the update does not carry")
            m = np.asarray(m)
            if m.dtype != np.bool_:
                raise TypeError(f"mask of {name!r} must be bool, got {m.dtype}")
            if m.shape != self.w[name].shape:
                raise ValueError(
                    f"mask of {name!r} has shape {m.shape}, the tensor has {self.w[name].shape} blocks"
                )

    def add(
        self,
        delta: Mapping[str, npt.NDArray[Any]],
        weight: float,
        denom: float,
        *,
        masks: Mapping[str, npt.NDArray[np.bool_]] | None = None,
        zero_is_unsent: bool = False,
        scale: float = 1.0,
    ) -> None:
        """sum += weight·scale·delta on the sent blocks; w += weight, n += denom there."""
        self.check(delta, masks)
        coef = weight * scale
        for name, d in delta.items():
            flat = np.asarray(d).reshape(-1)
            acc = self.sum[name].reshape(-1)
            m = None if masks is None else masks.get(name)
            if m is None and zero_is_unsent:
                m = block_mask_of_nonzero(flat, self.block)
            if m is not None and bool(np.all(m)):
                m = None
            if m is not None and not bool(np.any(m)):
                continue
            # Chunk by chunk through one small float64 scratch (as FedAvg): no model-size
            # temporary per update.
            for lo in range(0, flat.size, CHUNK):
                hi = min(lo + CHUNK, flat.size)
                s = self._scratch[: hi - lo]
                np.multiply(flat[lo:hi], coef, out=s, dtype=np.float64)
                if m is not None:
                    s *= self._element_mask(m, lo, hi)
                acc[lo:hi] += s
            if m is None:
                self.w[name] += weight
                self.n[name] += denom
            else:
                self.w[name][m] += weight
                self.n[name][m] += denom

    def _element_mask(self, m: npt.NDArray[np.bool_], lo: int, hi: int) -> npt.NDArray[np.bool_]:
        if self.block <= 0:
            return np.full(hi - lo, bool(m[0]))
        out: npt.NDArray[np.bool_] = m[np.arange(lo, hi) // self.block]
        return out

    def apply(
        self,
        global_weights: Mapping[str, npt.NDArray[Any]],
        lr: Mapping[str, float] | float,
        divide_by: Mapping[str, str] | str = "w",
    ) -> TensorDict:
        """global + lr · sum / (w or n), per block; blocks with no weight keep the global value.
        Works in place on the sums (they are consumed), chunk by chunk."""
        out: TensorDict = {}
        for name, g in global_weights.items():
            den = self.w if (divide_by if isinstance(divide_by, str) else divide_by[name]) == "w" else self.n
            per_block = den.get(name)
            if per_block is None or not np.any(per_block > 0):
                out[name] = np.array(g, copy=True)
                continue
            rate = float(lr if isinstance(lr, float | int) else lr[name])
            flat_g = np.asarray(g).reshape(-1)
            acc = self.sum[name].reshape(-1)
            # per block: rate / weight, 0 where nobody sent (their sums are 0 too)
            factor = np.divide(rate, per_block, out=np.zeros_like(per_block), where=per_block > 0)
            for lo in range(0, flat_g.size, CHUNK):
                hi = min(lo + CHUNK, flat_g.size)
                if self.block <= 0:
                    acc[lo:hi] *= factor[0]
                else:
                    acc[lo:hi] *= factor[np.arange(lo, hi) // self.block]
                acc[lo:hi] += flat_g[lo:hi]
            out[name] = acc.astype(np.asarray(g).dtype).reshape(np.shape(g))
        return out

    def state(self) -> TensorDict:
        arrays: TensorDict = {}
        for k in self.sum:
            arrays[f"sum/{k}"] = self.sum[k]
            arrays[f"w/{k}"] = self.w[k]
            arrays[f"n/{k}"] = self.n[k]
        return arrays

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        want = {f"{p}/{k}" for k in self.sum for p in ("sum", "w", "n")}
        if set(arrays) != want:
            raise ValueError("checkpoint tensors do not match the model and block size")
        for k in self.sum:
            for p, store in (("sum", self.sum), ("w", self.w), ("n", self.n)):
                a = np.asarray(arrays[f"{p}/{k}"])
                if a.shape != store[k].shape:
                    raise ValueError(
                        f"checkpoint {p}/{k} has shape {a.shape}, expected {store[k].shape}: "
                        "another model or block size"
                    )
                store[k][...] = a


class StaleUpdate(ValueError):
    """An update older than the strategy's maximum staleness: refused, not folded in."""


class SumStrategy(StalenessLimit, Strategy):
    """Shared plumbing of the streaming strategies: a BlockSums, an update count, staleness checks,
    checkpoints. Subclasses say how an update is weighted (``_weights``) and how the sums become the
    next model (``finalize``)."""

    partial_ok = True

    def __init__(
        self,
        *,
        block: int = 0,
        zero_is_unsent: bool = False,
        staleness: Staleness | None = None,
        max_staleness: int | None = None,
    ) -> None:
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 or None, got {max_staleness}")
        self.sums = BlockSums(block)
        self.zero_is_unsent = zero_is_unsent
        self.staleness = staleness or Staleness("constant")
        self.max_staleness = max_staleness
        self._n = 0
        self._finalized = True  # until reset

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        self.sums.reset(global_weights)
        self._n = 0
        self._finalized = False

    def _check_open(self) -> None:
        if self._finalized:
            raise RuntimeError(f"{self.name}: call reset before accumulating (finalize consumed the round)")

    def _weights(self, samples: int, staleness: int) -> tuple[float, float]:
        """(numerator weight, denominator weight) of one update."""
        return float(samples) * self.staleness(staleness), float(samples)

    def accumulate(
        self,
        delta: Mapping[str, npt.NDArray[Any]],
        samples: int,
        staleness: int = 0,
        masks: Mapping[str, npt.NDArray[np.bool_]] | None = None,
    ) -> None:
        """Fold one update in. ``masks`` (name -> bool per block) marks which blocks of a tensor
        were sent; without it every block of every tensor in ``delta`` counts as sent (or, with
        ``zero_is_unsent``, every block holding a non-zero value)."""
        if samples <= 0:
            raise ValueError(f"samples must be > 0, got {samples}")
        self._check_open()
        why = self.refusal(staleness)
        if why is not None:
            raise StaleUpdate(why)
        self._before_add()
        w, den = self._weights(samples, staleness)
        self.sums.add(
            delta, w, den, masks=masks, zero_is_unsent=self.zero_is_unsent, scale=self._scale(delta)
        )
        self._n += 1

    def _before_add(self) -> None:
        """Hook: refuse an update before anything is folded in (e.g. a full buffer)."""

    def _scale(self, delta: Mapping[str, npt.NDArray[Any]]) -> float:
        """Hook: a factor on the update's values only (not its weight), e.g. norm clipping."""
        return 1.0

    def finalize(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        self._check_open()
        out = self._apply(global_weights)
        self._finalized = True
        return out

    @abstractmethod
    def _apply(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict: ...

    def state(self) -> tuple[TensorDict, dict[str, float]]:
        self._check_open()
        return self.sums.state(), {"n": float(self._n)}

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]], scalars: Mapping[str, float]) -> None:
        self._check_open()
        self.sums.load_state(arrays)
        self._n = int(scalars["n"])

    @property
    def updates(self) -> int:
        return self._n
