"""Aggregation strategies beyond FedAvg: partial averaging, FedBuff, EMS-FL, robust options.

Each module is tensor math behind the ``orbitfl.ground.strategy.Strategy`` interface; none knows
messages, sockets or clocks. ``make_strategy`` in ``orbitfl.ground.strategy`` selects them by name.
"""

# The interface module registers this package's strategies at its end; importing it first means
# that importing any strategy module directly still finds the interface fully defined.
import orbitfl.ground.strategy  # noqa: F401
