"""Central differential privacy: DP-FedAvg with fixed clipping (McMahan et al. ICLR 2018).

Each accepted update's whole delta is scaled to L2 norm ≤ C (``clip_norm``); the round's sum of
clipped deltas gets Gaussian noise N(0, (σ·C)²) per coordinate (σ: ``noise_multiplier``), and the
next model is w + η·(Σ clipped + noise)/m over the m updates of the round. Updates are weighted
equally (sample weighting would raise an agent's sensitivity with its claimed sample count).

The privacy spent, ε at ``delta`` after the rounds so far, is counted by Google's
``dp-accounting`` (the ``dp`` extra) with its RDP accountant: one Gaussian mechanism per round,
Poisson-subsampled with probability ``sampling_rate`` (the fraction of the population that takes
part in a round; 1.0, the default, assumes every agent takes part, which is the safe bound when
the ground does not sample). This is user-level DP for the updates' contributors, under the usual
trust-the-server model: the ground sees updates before noise.

Noise is drawn from a generator seeded by (``seed``, round count), so a replayed round after a
crash adds exactly the same noise. The round count is carried in ``state`` with the sums.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.ground.strategies.blocksums import SumStrategy
from orbitfl.ground.strategies.robust import l2_norm
from orbitfl.ground.strategies.staleness import Staleness
from orbitfl.wire.tensors import TensorDict

NEEDS = "central DP needs Google's dp-accounting: pip install 'orbitfl[dp]'"


def epsilon(noise_multiplier: float, rounds: int, delta: float, sampling_rate: float = 1.0) -> float:
    """ε spent after ``rounds`` Gaussian rounds at ``delta`` (RDP accountant of dp-accounting)."""
    if rounds <= 0:
        return 0.0
    try:  # Deferred: dp-accounting is the optional ``dp`` extra.
        from dp_accounting import dp_event, rdp
    except ImportError:  # pragma: no cover - checked at construction
        raise RuntimeError(NEEDS) from None
    event: Any = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling_rate < 1.0:
        event = dp_event.PoissonSampledDpEvent(sampling_rate, event)
    acc = rdp.RdpAccountant()
    acc.compose(event, rounds)
    return float(acc.get_epsilon(delta))


class CentralDP(SumStrategy):
    name = "dp"
    carries = True

    def __init__(
        self,
        *,
        clip_norm: float = 4.0,
        noise_multiplier: float = 0.1,
        delta: float = 1e-5,
        sampling_rate: float = 1.0,
        server_lr: float = 1.0,
        seed: int = 0,
        max_staleness: int | None = None,
    ) -> None:
        if not (math.isfinite(clip_norm) and clip_norm > 0.0):
            raise ValueError(f"clip_norm must be a finite number > 0, got {clip_norm}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0.0):
            raise ValueError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier}")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if not 0.0 < sampling_rate <= 1.0:
            raise ValueError(f"sampling_rate must be in (0, 1], got {sampling_rate}")
        if not (math.isfinite(server_lr) and server_lr > 0.0):
            raise ValueError(f"server_lr must be a finite number > 0, got {server_lr}")
        try:
            import dp_accounting  # noqa: F401  (deferred: the optional ``dp`` extra)
        except ImportError:
            raise ValueError(NEEDS) from None
        super().__init__(staleness=Staleness("constant"), max_staleness=max_staleness)
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.delta = float(delta)
        self.sampling_rate = float(sampling_rate)
        self.server_lr = float(server_lr)
        self.seed = int(seed)
        self.noised_rounds = 0  # rounds released with noise since the federation began
        self._eps = (0, 0.0)  # (rounds, ε) last computed
        self.clipped = 0

    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        super().reset(global_weights)
        self.clipped = 0

    def _weights(self, samples: int, staleness: int) -> tuple[float, float]:
        return 1.0, 1.0

    def _scale(self, delta: Mapping[str, npt.NDArray[Any]]) -> float:
        norm = l2_norm(delta)
        if norm <= self.clip_norm:
            return 1.0
        self.clipped += 1
        return self.clip_norm / norm

    def _apply(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        rng = np.random.default_rng([self.seed, self.noised_rounds])
        sd = self.noise_multiplier * self.clip_norm
        m = float(self._n)
        for name in global_weights:  # a fixed order: the same noise on a replay
            acc = self.sums.sum[name]
            acc += rng.normal(0.0, sd, size=acc.shape)
            # every coordinate is released with noise, even one nobody sent
            self.sums.w[name][...] = m
        self.noised_rounds += 1
        return self.sums.apply(global_weights, self.server_lr, "w")

    def state(self) -> tuple[TensorDict, dict[str, float]]:
        arrays, scalars = super().state()
        return arrays, {**scalars, "dp.rounds": float(self.noised_rounds)}

    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]], scalars: Mapping[str, float]) -> None:
        super().load_state(arrays, {k: v for k, v in scalars.items() if k != "dp.rounds"})
        self.noised_rounds = int(scalars.get("dp.rounds", 0))

    def report(self) -> dict[str, float]:
        if self._eps[0] != self.noised_rounds:  # the accountant takes a while; once per round
            self._eps = (
                self.noised_rounds,
                epsilon(self.noise_multiplier, self.noised_rounds, self.delta, self.sampling_rate),
            )
        eps = self._eps[1]
        return {
            "dp_epsilon": eps,
            "dp_delta": self.delta,
            "dp_rounds": float(self.noised_rounds),
            "dp_clipped": float(self.clipped),
        }
