"""Aggregation strategies: FedAvg, partial averaging, FedBuff, EMS-FL, robust options.

Each module is tensor math behind the :class:`~orbitfl.ground.strategies.base.Strategy` interface;
none knows messages, sockets or clocks. ``make_strategy`` (``catalog``) selects them by name.
"""

from orbitfl.ground.strategies.base import BLOCK, StalenessLimit, Strategy
from orbitfl.ground.strategies.catalog import STRATEGIES, make_strategy
from orbitfl.ground.strategies.fedavg import FedAvg

__all__ = ["BLOCK", "STRATEGIES", "FedAvg", "StalenessLimit", "Strategy", "make_strategy"]
