"""Partial weight averaging (SpaceDML, IEEE Network 2021).

Each active agent sends only some tensors, or some blocks of a tensor; every coordinate is averaged
over the agents that sent it, weighted by their sample counts (× an optional staleness weight), and
coordinates nobody sent keep their global value. The paper's exact rule is not public; this is the
per-coordinate sample-weighted mean over senders that its abstract describes.

Streaming, O(model) memory: one float64 sum per tensor plus two weights per block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from orbitfl.ground.strategies.blocksums import SumStrategy
from orbitfl.ground.strategies.staleness import Staleness
from orbitfl.wire.tensors import TensorDict


class PartialAverage(SumStrategy):
    """``block``: elements per block (0: whole tensors). ``zero_is_unsent``: a block whose delta
    is all zeros counts as not sent, so a zero-filled partial delta (what travels when the wire
    carries no masks) averages like an explicitly masked one; on by default, because an UPDATE
    carries no masks (explicit ``masks`` take precedence). ``server_lr`` scales the averaged
    step. ``staleness``/``staleness_alpha``/``max_staleness``: optional staleness weighting (the
    default, constant, is SpaceDML's plain sample weighting)."""

    name = "partial"

    def __init__(
        self,
        *,
        block: int = 0,
        zero_is_unsent: bool = True,
        server_lr: float = 1.0,
        staleness: str = "constant",
        staleness_alpha: float = 0.5,
        max_staleness: int | None = None,
    ) -> None:
        if not server_lr > 0.0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        super().__init__(
            block=block,
            zero_is_unsent=zero_is_unsent,
            staleness=Staleness(staleness, staleness_alpha),
            max_staleness=max_staleness,
        )
        self.server_lr = float(server_lr)

    def _apply(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        return self.sums.apply(global_weights, self.server_lr, "w")
