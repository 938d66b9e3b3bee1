"""Name -> strategy class, and ``make_strategy`` that builds one by name from config options.

Options are checked here against the class's keyword parameters (unknown name, wrong type) before
the class checks their values, so every error starts with the option's name.
"""

from __future__ import annotations

import inspect
from typing import Any

from orbitfl.ground.strategies.base import Strategy
from orbitfl.ground.strategies.dp import CentralDP
from orbitfl.ground.strategies.emsfl import EMSFL
from orbitfl.ground.strategies.fedavg import FedAvg
from orbitfl.ground.strategies.fedbuff import FedBuff
from orbitfl.ground.strategies.fedprox import FedProx
from orbitfl.ground.strategies.partial import PartialAverage
from orbitfl.ground.strategies.robust import CoordinateMedian, Krum, NormClip, TrimmedMean
from orbitfl.ground.strategies.scaffold import Scaffold
from orbitfl.ground.strategies.serveropt import FedAdagrad, FedAdam, FedAvgM, FedYogi

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        PartialAverage,
        FedBuff,
        EMSFL,
        NormClip,
        CoordinateMedian,
        TrimmedMean,
        Krum,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedProx,
        Scaffold,
        CentralDP,
    )
}

_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def strategy_options(name: str) -> dict[str, Any]:
    """The options strategy ``name`` takes and their defaults (None: no default or "none")."""
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}")
    params = inspect.signature(cls.__init__).parameters
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _coerce(key: str, default: Any, value: Any) -> Any:
    if default is None:
        return value  # an optional int (e.g. max_staleness): the class checks it
    kind = type(default)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"{key} must be {_KINDS.get(kind, kind.__name__)}, got {value!r}")
    return value


def make_strategy(name: str, **options: Any) -> Strategy:
    known = strategy_options(name)
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if key not in known:
            raise ValueError(f"{key}: not an option of strategy {name!r} (known: {', '.join(sorted(known))})")
        checked[key] = _coerce(key, known[key], value)
    try:
        return STRATEGIES[name](**checked)
    except TypeError as exc:  # a missing option: a bad value in the config, not a bug
        raise ValueError(f"strategy {name!r}: {exc}") from None
