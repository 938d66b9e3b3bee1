"""The strategy interface: how accepted updates become the next global model.

A strategy knows tensors and weights, not messages or sockets. It accumulates updates as they
stream in (memory O(model), never O(updates × model)), exposes its partial sums as plain arrays so
the ground store can checkpoint them, and produces the next global model when the round closes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from orbitfl.wire.tensors import TensorDict

BLOCK = 1 << 15  # elements per accumulation block (256 KiB of float64 scratch)


class Strategy(ABC):
    """The interface the ground machine drives. Deltas are ``w_local - w_base`` per tensor."""

    name: str = "strategy"
    #: whether an update may carry only some of the model's tensors
    partial_ok: bool = False
    #: whether ``state`` holds more than the round's sums (e.g. server moments), kept across
    #: rounds: ``reset`` keeps it, and the ground checkpoints it when a round opens
    carries: bool = False
    #: whether stale updates are the design (FedBuff, EMS-FL): the ground lets an agent still
    #: training when a round closes finish, instead of handing it the next round's task
    asynchronous: bool = False

    @abstractmethod
    def reset(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> None:
        """Start an empty round on top of ``global_weights``."""

    @abstractmethod
    def accumulate(self, delta: Mapping[str, npt.NDArray[Any]], samples: int, staleness: int = 0) -> None:
        """Fold one accepted update in. Must be deterministic: recovery replays updates in order."""

    @abstractmethod
    def finalize(self, global_weights: Mapping[str, npt.NDArray[Any]]) -> TensorDict:
        """The next global model from the accumulated updates. May consume the partial sums:
        call ``reset`` before accumulating again."""

    @abstractmethod
    def state(self) -> tuple[TensorDict, dict[str, float]]:
        """Partial sums (arrays) and scalars, enough for ``load_state`` to continue exactly."""

    @abstractmethod
    def load_state(self, arrays: Mapping[str, npt.NDArray[Any]], scalars: Mapping[str, float]) -> None: ...

    @property
    @abstractmethod
    def updates(self) -> int:
        """How many updates were folded in this round."""

    def refusal(self, staleness: int) -> str | None:
        """Why this strategy would refuse an update ``staleness`` versions old (None: welcome).
        The ground asks before it stores an update, so a refused one is NACKed, never logged."""
        return None

    @property
    def ready(self) -> bool:
        """The strategy wants the round closed now (e.g. FedBuff's buffer holds K updates)."""
        return False

    def task_hints(self, agents: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """What every TASK tells agents about this strategy's agent-side part (e.g. FedProx's μ,
        EMS-FL's expert assignment), given each registered agent's HELLO capabilities (agent id ->
        capabilities). Plain msgpack-able values; deterministic in its inputs."""
        return {}

    def extra_tensors(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Tensors an update carries besides the model's ``shapes`` (name -> shape), e.g. SCAFFOLD's
        control-variate deltas; the ground decodes and checks them like the model's and passes
        them to :meth:`accumulate` with the delta."""
        return {}

    def report(self) -> dict[str, float]:
        """Figures a user watches for this strategy (e.g. the privacy spent), for logs and metrics."""
        return {}


class StalenessLimit:
    """Refuses an update from the future (staleness < 0) and, when ``max_staleness`` is set, one
    more than ``max_staleness`` versions old. Mixed in before :class:`Strategy`."""

    name: str
    max_staleness: int | None = None

    def refusal(self, staleness: int) -> str | None:
        """Why an update this stale would be refused (None: it is welcome). The ground machine asks
        before it stores an update, so a refused update is NACKed and never logged."""
        if staleness < 0:
            return f"staleness {staleness} < 0: the update claims a base newer than the global model"
        if self.max_staleness is not None and staleness > self.max_staleness:
            return f"update is {staleness} versions stale; {self.name} accepts at most {self.max_staleness}"
        return None
