"""EMS-FL aggregation (expert-driven model splitting; abstract only is public).

Clusters of agents train only the experts assigned to them (``assignment.assign_experts``) plus,
optionally, the shared parts (router, any non-expert layer), and upload only those. The ground:

- per expert: each expert tensor is the staleness-weighted mean over the agents that sent it
  (normally the agents of its one owning cluster), step ``expert_lr``; an expert nobody sent keeps
  its value;
- shared parts: buffered FedBuff-style, w ← w + η_g · Σ s(τ)·n·Δ / Σ n, so stale updates of the
  router take smaller steps.

Both come from one streaming BlockSums (O(model) memory, durable state). ``zero_is_unsent`` (on by
default) treats a tensor whose delta is all zeros as not sent: an agent whose trainer returns the
whole model with its frozen experts unchanged then counts exactly like one that uploaded only its
experts, instead of pulling other clusters' experts towards zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.ground.strategies.assignment import assign_experts, assignment_hints, cluster_affinity
from orbitfl.ground.strategies.blocksums import SumStrategy
from orbitfl.ground.strategies.staleness import Staleness
from orbitfl.wire.tensors import TensorDict


def expert_of(name: str, prefix: str = "expert.") -> int | None:
    """The expert index a parameter belongs to (``expert.3.fc1.weight`` -> 3), or None if shared."""
    if not name.startswith(prefix):
        return None
    head = name[len(prefix) :].split(".", 1)[0]
    return int(head) if head.isdigit() else None


class EMSFL(SumStrategy):
    name = "emsfl"
    asynchronous = True

    def __init__(
        self,
        *,
        expert_prefix: str = "expert.",
        expert_lr: float = 1.0,
        server_lr: float = 1.0,
        staleness: str = "poly",
        staleness_alpha: float = 0.5,
        max_staleness: int | None = 8,
        zero_is_unsent: bool = True,
    ) -> None:
        if not expert_prefix:
            raise ValueError("expert_prefix must be non-empty")
        for what, v in (("expert_lr", expert_lr), ("server_lr", server_lr)):
            if not v > 0.0:
                raise ValueError(f"{what} must be > 0, got {v}")
        super().__init__(
            staleness=Staleness(staleness, staleness_alpha),
            max_staleness=max_staleness,
            zero_is_unsent=zero_is_unsent,
        )
        self.expert_prefix = expert_prefix
        self.expert_lr = float(expert_lr)
        self.server_lr = float(server_lr)
        self._experts: list[str] = []
        self._assigned_for: tuple[Any, ...] = ()
        self._hints: dict[str, Any] = {}

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        super().reset(global_weights)
        self._experts = [k for k in global_weights if expert_of(k, self.expert_prefix) is not None]
        if not self._experts:
            raise ValueError(f"emsfl: the model has no parameter named {self.expert_prefix}<i>.*")

    def task_hints(self, agents: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """The expert assignment from the router affinity agents reported in HELLO
        (``capabilities["affinity"]``, one mean gate per expert on their local data). Each agent is
        its own cluster while there are no more agents than experts; beyond that, agents are dealt
        round-robin (by id) into as many clusters as there are experts. Agents that reported no
        affinity get no assignment and train everything."""
        n_exp = len({expert_of(k, self.expert_prefix) for k in self._experts})
        reported: dict[str, npt.NDArray[np.float64]] = {}
        for aid in sorted(agents):
            aff = agents[aid].get("affinity")
            if isinstance(aff, list) and len(aff) == n_exp and all(isinstance(a, int | float) for a in aff):
                vec = np.asarray(aff, np.float64)
                if np.all(np.isfinite(vec)) and np.all(vec >= 0):
                    reported[aid] = vec
        if not reported or n_exp == 0:
            return {}
        ids = sorted(reported)
        n_clusters = min(len(ids), n_exp)
        members = {aid: f"c{i % n_clusters}" for i, aid in enumerate(ids)}
        key = tuple((aid, tuple(reported[aid].tolist())) for aid in ids)
        if key != self._assigned_for:
            clusters, aff = cluster_affinity(reported, members)
            assignment = assign_experts(aff, -(-n_exp // len(clusters)), min_experts=1)
            self._hints = assignment_hints(assignment, clusters, members)
            self._assigned_for = key
        return self._hints

    def contributions(self) -> dict[int, float]:
        """Expert -> weight it received this round (0 for an expert nobody trained)."""
        out: dict[int, float] = {}
        for k in self._experts:
            e = expert_of(k, self.expert_prefix)
            assert e is not None
            out[e] = max(out.get(e, 0.0), float(self.sums.w[k].max()))
        return out

    def _apply(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        experts = set(self._experts)
        lr = {k: self.expert_lr if k in experts else self.server_lr for k in global_weights}
        div = {k: "w" if k in experts else "n" for k in global_weights}
        return self.sums.apply(global_weights, lr, div)
