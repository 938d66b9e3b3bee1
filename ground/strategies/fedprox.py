"""FedProx (Li et al. MLSys 2020): FedAvg on the ground, a proximal term on the agents.

Each agent minimises F_k(w) + μ/2·‖w − w_global‖² instead of F_k(w), which keeps a non-IID client
from drifting far from the global model during its local epochs. The ground's part is only to tell
agents μ (TASK hint ``proximal_mu``) and to average as FedAvg does; the term itself is added to the
gradient by the agent's trainer (``GraphTrainer.set_proximal``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from orbitfl.ground.strategies.fedavg import FedAvg

HINT = "proximal_mu"


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, *, mu: float = 0.01, server_lr: float = 1.0, partial_ok: bool = False) -> None:
        if not (math.isfinite(mu) and mu >= 0.0):
            raise ValueError(f"mu must be a finite number >= 0, got {mu}")
        super().__init__(partial_ok=partial_ok, server_lr=server_lr)
        self.mu = float(mu)

    def task_hints(self, agents: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {HINT: self.mu}
