"""Name -> strategy class, for ``make_strategy`` (``orbitfl.ground.strategy.STRATEGIES``)."""

from __future__ import annotations

from typing import Any

from orbitfl.ground.strategies.emsfl import EMSFL
from orbitfl.ground.strategies.fedbuff import FedBuff
from orbitfl.ground.strategies.partial import PartialAverage
from orbitfl.ground.strategies.robust import CoordinateMedian, NormClip, TrimmedMean

# type[Any]: mypy sees ground/strategy.py both as a file and as orbitfl.ground.strategy, two
# different Strategy classes to it; the classes here all subclass the one interface.
CATALOG: dict[str, type[Any]] = {
    cls.name: cls for cls in (PartialAverage, FedBuff, EMSFL, NormClip, CoordinateMedian, TrimmedMean)
}
