"""SCAFFOLD (Karimireddy et al., ICML 2020): client-drift correction by control variates.

The ground keeps a control variate c (one tensor per model tensor, zero at first) and sends it in
every TASK (hint ``scaffold_c``). Agent i trains with every gradient corrected by c − cᵢ, sets its
new cᵢ⁺ to the mean raw gradient of that run, and returns, besides its model delta Δyᵢ, the delta
Δcᵢ = cᵢ⁺ − cᵢ as extra tensors ``scaffold/<name>`` of the same update (through the same codec, so
their bytes count in the uplink). The ground averages Δy as FedAvg does (sample-weighted, times
``server_lr``) and moves c by (1/N)·ΣΔcᵢ over the round's updates, N the number of agents (the
option ``clients``, else the agents registered so far, at least the round's senders).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.ground.strategies.fedavg import FedAvg
from orbitfl.wire.control import HINT, PREFIX, control_to_hint
from orbitfl.wire.tensors import TensorDict

_C = "scaffold.c/"  # checkpoint names of c and of the round's ΣΔc
_S = "scaffold.sum/"


class Scaffold(FedAvg):
    name = "scaffold"
    carries = True

    def __init__(self, *, server_lr: float = 1.0, clients: int = 0) -> None:
        if isinstance(clients, bool) or not isinstance(clients, int) or clients < 0:
            raise ValueError(f"clients must be an integer >= 0 (0: the agents registered), got {clients!r}")
        super().__init__(server_lr=server_lr)
        self.clients = clients
        self._c: dict[str, npt.NDArray[np.float64]] = {}
        self._csum: dict[str, npt.NDArray[np.float64]] = {}
        self._cn = 0
        self._known = 0

    def extra_tensors(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return {PREFIX + k: tuple(s) for k, s in shapes.items()}

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        super().reset(global_weights)
        if set(self._c) != set(global_weights):
            self._c = {k: np.zeros(np.shape(v), np.float64) for k, v in global_weights.items()}
        self._csum = {k: np.zeros(np.shape(v), np.float64) for k, v in global_weights.items()}
        self._cn = 0

    def accumulate(self, delta: Mapping[str, npt.NDArray[Any]], samples: int, staleness: int = 0) -> None:
        model = {k: v for k, v in delta.items() if not k.startswith(PREFIX)}
        control = {k[len(PREFIX) :]: v for k, v in delta.items() if k.startswith(PREFIX)}
        for name, d in control.items():
            acc = self._csum.get(name)
            if acc is None:
                raise KeyError(f"control variate {name!r} is not in the model")
            if d.shape != acc.shape:
                raise ValueError(f"control variate {name!r} has shape {d.shape}, the model has {acc.shape}")
        super().accumulate(model, samples, staleness)  # checks samples and that the round is open
        for name, d in control.items():
            self._csum[name] += d
        if control:
            self._cn += 1

    def finalize(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        out = super().finalize(global_weights)
        n = max(self.clients or self._known, self._cn, 1)
        for name, s in self._csum.items():
            self._c[name] += s / n
        return out

    def task_hints(self, agents: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        self._known = max(self._known, len(agents))
        return {HINT: control_to_hint({k: v.astype(np.float32) for k, v in self._c.items()})}

    @property
    def control(self) -> dict[str, npt.NDArray[np.float64]]:
        """The ground's control variate c (a copy)."""
        return {k: v.copy() for k, v in self._c.items()}

    def state(self) -> tuple[TensorDict, dict[str, float]]:
        arrays, scalars = super().state()
        arrays = dict(arrays)
        arrays.update({_C + k: v for k, v in self._c.items()})
        arrays.update({_S + k: v for k, v in self._csum.items()})
        scalars = {**scalars, "scaffold/n": float(self._cn), "scaffold/known": float(self._known)}
        return arrays, scalars

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]], scalars: Mapping[str, float]) -> None:
        mine = {k: v for k, v in arrays.items() if k.startswith((_C, _S))}
        super().load_state({k: v for k, v in arrays.items() if k not in mine}, scalars)
        c = {k[len(_C) :]: v for k, v in mine.items() if k.startswith(_C)}
        s = {k[len(_S) :]: v for k, v in mine.items() if k.startswith(_S)}
        if set(c) != set(self._sum) or set(s) != set(self._sum):
            raise ValueError("checkpoint control variates do not match the model")
        self._c = {k: np.array(v, np.float64) for k, v in c.items()}
        self._csum = {k: np.array(v, np.float64) for k, v in s.items()}
        self._cn = int(scalars["scaffold/n"])
        self._known = int(scalars["scaffold/known"])
