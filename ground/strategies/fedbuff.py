"""Asynchronous buffered aggregation (FedBuff, Nguyen et al., AISTATS 2022).

Updates arrive built on older global versions; each is weighted by s(τ) (default 1/√(1+τ), the
paper's choice) and buffered; after K updates the buffer is applied with a server learning rate:

    w ← w + η_g · Σ_i s(τ_i)·n_i·Δ_i / Σ_i n_i      (weighting="samples")
    w ← w + η_g · Σ_i s(τ_i)·Δ_i / K               (weighting="uniform", the paper's form)

K is the number of buffered updates that carry the tensor (the buffer size when it is full and every
update is complete; fewer when the ground flushes at a deadline). Dividing by the undiscounted
total (not by Σ s(τ_i)·n_i) is what makes a stale buffer take a smaller step. Updates older than
``max_staleness`` are refused with a reason. With every τ = 0 and η_g = 1 the "samples" form is
exactly FedAvg. Tensors an update does not carry are averaged over
the updates that did (as in partial averaging). The buffer is the sums: O(model) memory, durable
through ``state``/``load_state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from orbitfl.ground.strategies.blocksums import SumStrategy
from orbitfl.ground.strategies.staleness import Staleness
from orbitfl.wire.tensors import TensorDict

WEIGHTINGS = ("samples", "uniform")


class BufferFull(RuntimeError):
    """K updates are buffered: finalize (apply the buffer) before adding another."""


class FedBuff(SumStrategy):
    name = "fedbuff"
    asynchronous = True

    def __init__(
        self,
        *,
        buffer_size: int = 10,
        server_lr: float = 1.0,
        staleness: str = "poly",
        staleness_alpha: float = 0.5,
        max_staleness: int | None = 8,
        weighting: str = "samples",
        block: int = 0,
        zero_is_unsent: bool = False,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size (K) must be >= 1, got {buffer_size}")
        if not server_lr > 0.0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {weighting!r} is not one of {list(WEIGHTINGS)}")
        super().__init__(
            block=block,
            zero_is_unsent=zero_is_unsent,
            staleness=Staleness(staleness, staleness_alpha),
            max_staleness=max_staleness,
        )
        self.buffer_size = buffer_size
        self.server_lr = float(server_lr)
        self.weighting = weighting
        self._stale: list[int] = []  # staleness of each buffered update (for report)

    @property
    def ready(self) -> bool:
        """K updates are buffered: time to apply."""
        return self._n >= self.buffer_size

    def _before_add(self) -> None:
        if self.ready:
            raise BufferFull(
                f"fedbuff: the buffer already holds K={self.buffer_size} updates; finalize first"
            )

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        super().reset(global_weights)
        self._stale = []

    def _weights(self, samples: int, staleness: int) -> tuple[float, float]:
        n = float(samples) if self.weighting == "samples" else 1.0
        self._stale.append(staleness)
        return n * self.staleness(staleness), n

    def report(self) -> dict[str, float]:
        """The buffer just applied: its size, its stalest update and that update's weight s(τ)."""
        stale = self._stale
        if not stale:
            return {}
        worst = max(stale)
        return {
            "buffered": float(len(stale)),
            "staleness_max": float(worst),
            "staleness_weight_min": self.staleness(worst),
        }

    def _apply(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        return self.sums.apply(global_weights, self.server_lr, "n")
