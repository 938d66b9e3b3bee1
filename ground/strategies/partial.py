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
    carries no masks (explicit ``masks`` take precedence); ``block`` must divide the agents'
    ``agent_block`` so that a zero block is one the agent did not send. ``server_lr`` scales the averaged
    step. ``staleness``/``staleness_alpha``/``max_staleness``: optional staleness weighting (the
    default, constant, is SpaceDML's plain sample weighting)."""

    name = "partial"

    def __init__(
        self,
        *,
        block: int = 256,
        zero_is_unsent: bool = True,
        server_lr: float = 1.0,
        staleness: str = "constant",
        staleness_alpha: float = 0.5,
        max_staleness: int | None = None,
        agent_block: int = 0,
        fraction: float = 0.5,
        budget_bytes: int = 0,
    ) -> None:
        if not server_lr > 0.0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        if agent_block < 0:
            raise ValueError(f"agent_block must be >= 0 (0: the same as block), got {agent_block}")
        if block > 0 and agent_block > 0 and agent_block % block:
            raise ValueError(f"agent_block ({agent_block}) must be a multiple of block ({block})")
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0 (0: none), got {budget_bytes}")
        self.agent_block = int(agent_block) or block
        self.fraction = float(fraction)
        self.budget_bytes = int(budget_bytes)
        super().__init__(
            block=block,
            zero_is_unsent=zero_is_unsent,
            staleness=Staleness(staleness, staleness_alpha),
            max_staleness=max_staleness,
        )
        self.server_lr = float(server_lr)

    def task_hints(self, agents: Mapping[str, Any]) -> dict[str, Any]:
        """The agents' part: send the blocks of ``agent_block`` values that changed most, within
        ``budget_bytes`` (0: none) and ``fraction`` of the full update, whichever is smaller (and
        the agent's own uplink budget). Ground ``block`` 0 (whole tensors) with ``zero_is_unsent``
        would average the zeros of a partly sent tensor in, so the ground counts at a granularity
        that divides the agent's blocks."""
        return {
            "partial": {
                "block": self.agent_block,
                "fraction": self.fraction,
                "budget_bytes": self.budget_bytes,
            }
        }

    def _apply(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        return self.sums.apply(global_weights, self.server_lr, "w")
