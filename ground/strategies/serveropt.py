"""Server-side optimizers: FedAvgM, FedAdam, FedYogi, FedAdagrad (Reddi et al. ICLR 2021,
"Adaptive Federated Optimization", Algorithm 2; FedAvgM: Hsu et al. 2019).

The round's pseudo-gradient Δ is FedAvg's sample-weighted mean of the deltas (streamed, O(model)).
Then, per coordinate, with moments kept across rounds:

    m ← β1·m + (1−β1)·Δ
    v ← v + Δ²                                   (adagrad)
    v ← v − (1−β2)·Δ²·sign(v − Δ²)               (yogi)
    v ← β2·v + (1−β2)·Δ²                         (adam)
    w ← w + η·m / (√v + τ)

and FedAvgM: m ← β·m + Δ, w ← w + η·m. Moments start at m = 0, v = τ² (the paper's v₋₁ ≥ τ²).
The moments are O(model) too and carried in ``state``: the ground checkpoints them when a round
opens (see GroundMachine._close_round), so a restart continues with the same moments and a
replayed round ends in the same model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.ground.strategies.base import StalenessLimit, Strategy
from orbitfl.ground.strategies.fedavg import FedAvg
from orbitfl.wire.tensors import TensorDict

F32 = npt.NDArray[np.float32]


def _check(what: str, value: float, lo: float, hi: float, hi_open: bool = True) -> float:
    ok = math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(f"{what} must be in [{lo:g}, {hi:g}{')' if hi_open else ']'}, got {value}")
    return float(value)


class _ServerOpt(StalenessLimit, Strategy):
    """FedAvg for the pseudo-gradient, then a server optimizer step (subclasses: ``_step``)."""

    partial_ok = True
    carries = True

    def __init__(self, *, server_lr: float, max_staleness: int | None = None) -> None:
        if not (math.isfinite(server_lr) and server_lr > 0.0):
            raise ValueError(f"server_lr must be a finite number > 0, got {server_lr}")
        if max_staleness is not None and max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0 or None, got {max_staleness}")
        self.server_lr = float(server_lr)
        self.max_staleness = max_staleness
        self._avg = FedAvg(partial_ok=True)
        self.m: dict[str, F32] = {}
        self.v: dict[str, F32] = {}
        self.steps = 0  # server steps taken since the federation began

    def _init_moments(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        shapes = {k: np.shape(v) for k, v in global_weights.items()}
        if set(self.m) == set(shapes) and all(self.m[k].shape == s for k, s in shapes.items()):
            return  # moments survive from round to round
        self.m = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
        self.v = {k: np.full(s, self._v0(), np.float32) for k, s in shapes.items()}
        self.steps = 0

    def _v0(self) -> float:
        return 0.0

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        self._init_moments(global_weights)
        self._avg.reset(global_weights)

    def accumulate(self, delta: Mapping[str, npt.NDArray[Any]], samples: int, staleness: int = 0) -> None:
        self._avg.accumulate(delta, samples, staleness)

    def finalize(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        # FedAvg with server_lr 1 gives w + Δ; the pseudo-gradient is that minus w.
        avg = self._avg.finalize(global_weights)
        out: TensorDict = {}
        for name, g in global_weights.items():
            g64 = np.asarray(g, np.float64)
            if self._avg._weight.get(name, 0.0) == 0.0:
                out[name] = np.array(g, copy=True)  # nobody sent it: no step, moments untouched
                continue
            delta = (np.asarray(avg[name], np.float64) - g64).astype(np.float32)
            step = self._step(name, delta)
            out[name] = (g64 + self.server_lr * step.astype(np.float64)).astype(np.asarray(g).dtype)
        self.steps += 1
        return out

    def _step(self, name: str, delta: F32) -> F32:
        raise NotImplementedError

    def state(self) -> tuple[TensorDict, dict[str, float]]:
        arrays, scalars = self._avg.state()
        out: TensorDict = {f"avg/{k}": v for k, v in arrays.items()}
        out.update({f"m/{k}": v for k, v in self.m.items()})
        out.update({f"v/{k}": v for k, v in self.v.items()})
        return out, {**scalars, "opt.steps": float(self.steps)}

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]], scalars: Mapping[str, float]) -> None:
        parts: dict[str, dict[str, npt.NDArray[Any]]] = {"avg": {}, "m": {}, "v": {}}
        for key, a in arrays.items():
            head, _, name = key.partition("/")
            if head not in parts:
                raise ValueError(f"checkpoint entry {key!r} is not this strategy's")
            parts[head][name] = a
        for head, store in (("m", self.m), ("v", self.v)):
            if set(parts[head]) != set(store):
                raise ValueError(f"checkpoint moments {head!r} do not match the model")
            for k, a in parts[head].items():
                store[k] = np.array(a, dtype=np.float32, copy=True).reshape(store[k].shape)
        self._avg.load_state(parts["avg"], {k: v for k, v in scalars.items() if k != "opt.steps"})
        self.steps = int(scalars.get("opt.steps", 0))

    @property
    def updates(self) -> int:
        return self._avg.updates


class FedAvgM(_ServerOpt):
    """Server momentum: m ← β·m + Δ, w ← w + η·m."""

    name = "fedavgm"

    def __init__(
        self, *, server_lr: float = 1.0, momentum: float = 0.5, max_staleness: int | None = None
    ) -> None:
        super().__init__(server_lr=server_lr, max_staleness=max_staleness)
        self.momentum = _check("momentum", momentum, 0.0, 1.0)

    def _step(self, name: str, delta: F32) -> F32:
        m = self.m[name]
        m *= np.float32(self.momentum)
        m += delta
        return m


class _Adaptive(_ServerOpt):
    kind = "adam"

    def __init__(
        self,
        *,
        server_lr: float = 0.03,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(server_lr=server_lr, max_staleness=max_staleness)
        self.beta1 = _check("beta1", beta1, 0.0, 1.0)
        self.beta2 = _check("beta2", beta2, 0.0, 1.0)
        if not (math.isfinite(tau) and tau > 0.0):
            raise ValueError(f"tau must be a finite number > 0, got {tau}")
        self.tau = float(tau)

    def _v0(self) -> float:
        return self.tau * self.tau

    def _step(self, name: str, delta: F32) -> F32:
        m, v = self.m[name], self.v[name]
        m *= np.float32(self.beta1)
        m += np.float32(1.0 - self.beta1) * delta
        sq = delta * delta
        if self.kind == "adagrad":
            v += sq
        elif self.kind == "yogi":
            v -= np.float32(1.0 - self.beta2) * sq * np.sign(v - sq)
        else:
            v *= np.float32(self.beta2)
            v += np.float32(1.0 - self.beta2) * sq
        denom = np.sqrt(np.maximum(v, np.float32(0.0))) + np.float32(self.tau)
        return np.divide(m, denom, dtype=np.float32)


class FedAdam(_Adaptive):
    name = "fedadam"
    kind = "adam"


class FedYogi(_Adaptive):
    name = "fedyogi"
    kind = "yogi"


class FedAdagrad(_Adaptive):
    """Adagrad's v only grows, so its steps shrink round by round; its default η is larger than
    Adam's and Yogi's (as in Reddi et al.'s tuned values), chosen so the demo converges."""

    name = "fedadagrad"
    kind = "adagrad"

    def __init__(
        self,
        *,
        server_lr: float = 0.3,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        max_staleness: int | None = None,
    ) -> None:
        super().__init__(server_lr=server_lr, beta1=beta1, beta2=beta2, tau=tau, max_staleness=max_staleness)
