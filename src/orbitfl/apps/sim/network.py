"""The ground network in the simulator: a station machine per station, one aggregator, and the
terrestrial links between them on the virtual clock.

The machines are the daemons' own (``ground/station.py``, ``ground/aggregator.py``): a station
admits and ACKs agents' updates, keeps them in its relay outbox and forwards them to the aggregator
over its store-and-forward link; the aggregator counts each update once and sends every new model
version back to each station, which serves agents the version it holds. This module only carries
their frames: station -> aggregator and back over :mod:`orbitfl.apps.sim.backhaul` (latency, rate,
outages), and tells a station when its link comes and goes (UpstreamUp / UpstreamDown; the
aggregator gets PeerSilent). The radio between satellites and stations stays in the runner.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy.typing as npt

from orbitfl.apps.sim.backhaul import Backhaul, BackhaulConfig, outage_schedule
from orbitfl.apps.sim.orbits import Window
from orbitfl.ground.aggregator import AggregatorMachine
from orbitfl.ground.machine import GroundConfig
from orbitfl.ground.station import StationConfig, StationMachine
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import Strategy
from orbitfl.runtime.events import (
    Event,
    MessageReceived,
    PeerSilent,
    RoundClosed,
    Send,
    SendUpstream,
    Tick,
    UpstreamDown,
    UpstreamReceived,
    UpstreamUp,
)
from orbitfl.runtime.outbox import Outbox

# What the network hands back to the runner: (station, Send to a satellite) for the radio, and
# (None, RoundClosed) for the report.
Out = list[tuple[str | None, Send | RoundClosed]]


class StationNetwork:
    """Stations named by their antennas' names; each one's link to the aggregator in ``backhaul``.

    ``schedule(t, data)`` must hand ``data`` back to :meth:`arrive` at virtual time ``t`` (the
    runner's event heap)."""

    def __init__(
        self,
        aggregator: AggregatorMachine,
        stations: Mapping[str, StationMachine],
        backhaul: Backhaul,
    ) -> None:
        self.aggregator = aggregator
        self.stations = dict(stations)
        self.backhaul = backhaul
        self.schedule: Callable[[float, Any], None] = lambda t, data: None
        self.rounds_updates = 0  # updates in the rounds the aggregator closed (RoundClosed.updates)

    def start_events(self) -> list[tuple[float, Any]]:
        """Every link's first state (up at 0 unless an outage starts there) and its changes."""
        first = [(0.0, ("link", st, True)) for st in self.stations if self.backhaul.is_up(st, 0.0)]
        changes = [(t, ("link", st, up)) for t, st, up in self.backhaul.transitions() if t > 0.0]
        return first + changes

    # --- events in --------------------------------------------------------------------------------

    def handle(self, station: str | None, event: Event, now: float) -> Out:
        """An event of the radio side: a satellite's frame or silence at ``station``; a Tick (no
        station) goes to every machine."""
        out: Out = []
        if isinstance(event, Tick):
            self._aggregator(event, now, out)
            for st in self.stations:
                self._station(st, event, now, out)
        elif station is not None:
            self._station(station, event, now, out)
        return out

    def arrive(self, data: Any, now: float) -> Out:
        """A scheduled network event: a link changing state, or a frame arriving over one."""
        out: Out = []
        kind, st = data[0], data[1]
        if kind == "link":
            if data[2]:
                self._station(st, UpstreamUp(), now, out)
            else:
                self._station(st, UpstreamDown(), now, out)
                self._aggregator(PeerSilent(st), now, out)
        elif kind == "up":
            self._aggregator(MessageReceived(st, data[2]), now, out)
        elif kind == "down":
            self._station(st, UpstreamReceived(data[2]), now, out)
        return out

    # --- actions out ------------------------------------------------------------------------------

    def _station(self, st: str, event: Event, now: float, out: Out) -> None:
        for a in self.stations[st].handle(event, now):
            if isinstance(a, Send):
                out.append((st, a))
            elif isinstance(a, SendUpstream):
                self._carry(st, a.frame, now, upstream=True)

    def _aggregator(self, event: Event, now: float, out: Out) -> None:
        for a in self.aggregator.handle(event, now):
            if isinstance(a, Send):
                if a.peer in self.stations:
                    self._carry(a.peer, a.frame, now, upstream=False)
            elif isinstance(a, RoundClosed):
                self.rounds_updates += a.updates
                out.append((None, a))

    def _carry(self, st: str, frame: bytes, now: float, *, upstream: bool) -> None:
        t = self.backhaul.send(st, len(frame), now, upstream=upstream)
        if t is not None:
            self.schedule(t, ("up" if upstream else "down", st, frame))

    # --- the audit and the report -----------------------------------------------------------------

    def audit(self) -> dict[str, float]:
        """Exactly-once from the stores: every update a station ACKed to an agent (its ``seen``
        table) is aggregated (the aggregator's ``seen``), still waiting in that station's relay
        outbox, or dropped there with the aggregator's reason; none is folded twice (the updates of
        the closed rounds plus the open round's equal the aggregator's distinct ids).
        ``max_forward_delay_s``: the longest an update waited between a station's ACK and the
        aggregator's (an outage shows here)."""
        acked: dict[str, float] = {}
        pending: set[str] = set()
        dropped: set[str] = set()
        for m in self.stations.values():
            for uid, t in _seen(m.store).items():
                acked[uid] = min(t, acked.get(uid, t))
            pending |= {i.task_id for i in m.outbox.items()}
            dropped |= {str(r[0]) for r in m.outbox.db.execute("SELECT task_id FROM dropped")}
        agg = self.aggregator
        aggregated = _seen(agg.store)
        open_round = agg.store.round_stats(agg.round)[0] if not agg.done else 0
        done = set(aggregated)
        delays = [aggregated[u] - acked[u] for u in done & set(acked)]
        return {
            "acked_by_stations": len(acked),
            "aggregated": len(done),
            "pending_at_stations": len(pending - done),
            "dropped_at_stations": len(dropped - done),
            "lost": len(set(acked) - done - pending - dropped),
            "not_from_a_station": len(done - set(acked)),
            "folded": self.rounds_updates + open_round,
            "max_forward_delay_s": round(max(delays, default=0.0), 3),
        }

    def result(self) -> dict[str, Any]:
        """The SimResult fields of the network."""
        stats = {
            st: {
                "relayed": m.relayed,
                "backlog": m.backlog(),
                "accepted": 0 if m.agents is None else m.agents.accepted,
            }
            for st, m in self.stations.items()
        }
        return {
            "backhaul_up_bytes": self.backhaul.up.bytes,
            "backhaul_down_bytes": self.backhaul.down.bytes,
            "backhaul_frames_lost": self.backhaul.up.lost + self.backhaul.down.lost,
            "station_stats": stats,
            "audit": self.audit(),
        }

    def close(self) -> None:
        self.aggregator.store.close()
        for m in self.stations.values():
            m.store.close()
            m.outbox.close()


def _seen(store: GroundStore) -> dict[str, float]:
    """update id -> when this store accepted it."""
    return {str(r[0]): float(r[1]) for r in store.db.execute("SELECT update_id, accepted_at FROM seen")}


def station_names(windows: Sequence[Window]) -> list[str]:
    return sorted({w.station for w in windows})


def build_network(
    cfg: Any,
    gcfg: GroundConfig,
    initial: Mapping[str, npt.NDArray[Any]],
    strategy: Strategy,
    windows: Sequence[Window],
    duration: float,
    work: Path,
) -> StationNetwork:
    """The aggregator and a station per antenna of ``windows``, from the sim config ``cfg``."""
    bcfg: BackhaulConfig | None = cfg.backhaul()
    assert bcfg is not None, "build_network needs topology 'stations'"
    names = station_names(windows)
    backhaul = Backhaul(
        bcfg, outage_schedule(bcfg.outages, names, duration if math.isfinite(duration) else 0.0, cfg.seed)
    )
    aggregator = AggregatorMachine(GroundStore(work / "aggregator"), gcfg, initial, strategy)
    stations = {
        st: StationMachine(
            GroundStore(work / f"station-{st}"),
            Outbox(work / f"station-{st}-relay.db"),
            StationConfig(
                st,
                dataclasses.replace(gcfg, hints=dict(gcfg.hints)),
                heartbeat_seconds=cfg.heartbeat_s,
                retransmit_seconds=cfg.retransmit_s,
            ),
        )
        for st in names
    }
    return StationNetwork(aggregator, stations, backhaul)
