"""Name -> strategy class, and ``make_strategy`` that builds one by name from config options."""

from __future__ import annotations

from typing import Any

from orbitfl.ground.strategies.base import Strategy
from orbitfl.ground.strategies.emsfl import EMSFL
from orbitfl.ground.strategies.fedavg import FedAvg
from orbitfl.ground.strategies.fedbuff import FedBuff
from orbitfl.ground.strategies.partial import PartialAverage
from orbitfl.ground.strategies.robust import CoordinateMedian, NormClip, TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (FedAvg, PartialAverage, FedBuff, EMSFL, NormClip, CoordinateMedian, TrimmedMean)
}


def make_strategy(name: str, **options: Any) -> Strategy:
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}")
    try:
        return cls(**options)
    except TypeError as exc:  # an unknown or missing option: a bad value in the config, not a bug
        raise ValueError(f"strategy {name!r}: {exc}") from None
