"""The terrestrial links between ground stations and the aggregator, on the virtual clock.

Each station has one link to the aggregator: a FIFO each way with a fixed latency and an optional
rate, and a schedule of outages (given, or drawn from a seeded alternating renewal process with
exponential up and down times). A frame is put on the link only while it is up and arrives
``latency + len/rate`` after the previous one on that direction finished; a frame still in flight
when an outage begins is lost, as a TCP connection cut mid-transfer loses what it had not
delivered. Nothing here retries: the station's store-and-forward outbox does, exactly as over a
real link, so the simulator exercises the same resume and ACK discipline as the daemons.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOPOLOGIES = ("single", "stations")
DEFAULT_BACKHAUL_LATENCY_S = 0.05  # a terrestrial path across continents, one way


@dataclass(frozen=True)
class RandomOutages:
    """Each station's link alternates up ~ Exp(mean_up_s) and down ~ Exp(mean_down_s), starting
    up; drawn from ``seed`` (default: the simulation's) and the station's name, so a station's
    schedule does not change when another station is added."""

    mean_up_s: float
    mean_down_s: float
    seed: int | None = None


@dataclass(frozen=True)
class Outage:
    station: str
    start: float
    end: float


OutageSpec = RandomOutages | tuple[Outage, ...]


def _positive(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be a positive number, got {v!r}")
    return float(v)


def _time(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{what} must be a number of seconds >= 0, got {v!r}")
    return float(v)


def parse_outages(raw: Any) -> OutageSpec:
    """``backhaul_outages`` of the sim config, checked.

    - None or []: the links never fail;
    - a table ``{mean_up_s = ..., mean_down_s = ..., seed = ...}`` (seed optional): random;
    - a list of tables ``{station = "toulouse", start_s = ..., end_s = ...}``, or of strings
      ``"toulouse:START:END"`` (the ``--backhaul-outages`` form): a schedule.
    The string ``"random:MEAN_UP:MEAN_DOWN"`` is the flag's form of the random process."""
    where = "backhaul_outages"
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if isinstance(raw, Mapping):
        unknown = sorted(set(raw) - {"mean_up_s", "mean_down_s", "seed"})
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {unknown}; a random process has mean_up_s, mean_down_s, seed"
            )
        if "mean_up_s" not in raw or "mean_down_s" not in raw:
            raise ValueError(f"{where}: a random process needs both mean_up_s and mean_down_s")
        seed = raw.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"{where}: seed must be an integer, got {seed!r}")
        return RandomOutages(
            _positive(raw["mean_up_s"], f"{where}.mean_up_s"),
            _positive(raw["mean_down_s"], f"{where}.mean_down_s"),
            seed,
        )
    if not isinstance(raw, Sequence):
        raise ValueError(f"{where}: expected a list of outages or a random-process table, got {raw!r}")
    if len(raw) == 1 and isinstance(raw[0], str) and raw[0].startswith("random:"):
        parts = raw[0].split(":")
        if len(parts) != 3:
            raise ValueError(f"{where}: {raw[0]!r}: the random form is random:MEAN_UP_S:MEAN_DOWN_S")
        try:
            up, down = float(parts[1]), float(parts[2])
        except ValueError:
            raise ValueError(f"{where}: {raw[0]!r}: MEAN_UP_S and MEAN_DOWN_S must be numbers") from None
        return RandomOutages(_positive(up, f"{where} mean up"), _positive(down, f"{where} mean down"))
    out: list[Outage] = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        station: Any
        start: Any
        end: Any
        if isinstance(item, str):
            parts = item.split(":")
            if len(parts) != 3 or not parts[0]:
                raise ValueError(f"{at}: {item!r}: an outage is STATION:START_S:END_S")
            try:
                station, start, end = parts[0], float(parts[1]), float(parts[2])
            except ValueError:
                raise ValueError(f"{at}: {item!r}: START_S and END_S must be numbers") from None
        elif isinstance(item, Mapping):
            unknown = sorted(set(item) - {"station", "start_s", "end_s"})
            if unknown:
                raise ValueError(f"{at}: unknown key(s) {unknown}; an outage has station, start_s, end_s")
            station, start, end = item.get("station"), item.get("start_s"), item.get("end_s")
            if not isinstance(station, str) or not station:
                raise ValueError(f"{at}: station must be a station's name, got {station!r}")
        else:
            raise ValueError(f"{at}: an outage is a table or STATION:START_S:END_S, got {item!r}")
        s, e = _time(start, f"{at}.start_s"), _time(end, f"{at}.end_s")
        if e <= s:
            raise ValueError(f"{at}: end_s ({e:g}) must be after start_s ({s:g})")
        out.append(Outage(station, s, e))
    return tuple(out)


@dataclass(frozen=True)
class BackhaulConfig:
    latency_s: float = DEFAULT_BACKHAUL_LATENCY_S
    rate_bps: float | None = None  # None: the terrestrial link is never the bottleneck
    outages: OutageSpec = ()

    def __post_init__(self) -> None:
        _time(self.latency_s, "backhaul_latency_s")
        if self.rate_bps is not None:
            _positive(self.rate_bps, "backhaul_rate_bps")


def _merge(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(intervals):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def outage_schedule(
    spec: OutageSpec, stations: Sequence[str], duration: float, seed: int
) -> dict[str, list[tuple[float, float]]]:
    """Each station's outages as sorted, disjoint [start, end) intervals within [0, duration]."""
    known = set(stations)
    sched: dict[str, list[tuple[float, float]]] = {s: [] for s in stations}
    if isinstance(spec, RandomOutages):
        base = spec.seed if spec.seed is not None else seed
        for st in stations:
            rng = random.Random(f"backhaul:{base}:{st}")
            t = rng.expovariate(1.0 / spec.mean_up_s)
            while t < duration:
                down = rng.expovariate(1.0 / spec.mean_down_s)
                sched[st].append((t, min(duration, t + down)))
                t += down + rng.expovariate(1.0 / spec.mean_up_s)
        return sched
    unknown = sorted({o.station for o in spec} - known)
    if unknown:
        raise ValueError(
            f"backhaul_outages name stations not in the network: {unknown}; stations: {sorted(known)}"
        )
    for o in spec:
        if o.start < duration:
            sched[o.station].append((o.start, min(o.end, duration)))
    return {s: _merge(v) for s, v in sched.items()}


@dataclass
class _Direction:
    free: float = 0.0  # when the last frame put on this direction finished serialising


@dataclass
class LinkStats:
    frames: int = 0
    bytes: int = 0
    lost: int = 0


@dataclass
class Backhaul:
    """Every station's link to the aggregator. ``send`` answers when a frame arrives, or None when
    the link is down now or goes down before it arrives (the frame is lost; its bytes still count
    as sent when the link was up to take them)."""

    cfg: BackhaulConfig
    schedule: dict[str, list[tuple[float, float]]]
    up: LinkStats = field(default_factory=LinkStats)  # station -> aggregator
    down: LinkStats = field(default_factory=LinkStats)  # aggregator -> station
    _dirs: dict[tuple[str, bool], _Direction] = field(default_factory=dict)

    def is_up(self, station: str, t: float) -> bool:
        return not any(s <= t < e for s, e in self.schedule[station])

    def next_cut(self, station: str, t: float) -> float:
        """When the link next goes down at or after ``t`` (inf: never)."""
        return next((s for s, e in self.schedule[station] if e > t), math.inf)

    def transitions(self) -> list[tuple[float, str, bool]]:
        """(time, station, up after it) for every change of state, in time order."""
        out = [
            (t, st, up)
            for st, iv in self.schedule.items()
            for s, e in iv
            for t, up in ((s, False), (e, True))
        ]
        return sorted(out)

    def send(self, station: str, n: int, now: float, *, upstream: bool) -> float | None:
        stats = self.up if upstream else self.down
        stats.frames += 1
        if not self.is_up(station, now):
            stats.lost += 1
            return None
        stats.bytes += n
        d = self._dirs.setdefault((station, upstream), _Direction())
        start = max(now, d.free)
        rate = self.cfg.rate_bps
        done = start + (n * 8.0 / rate if rate else 0.0)
        d.free = done
        arrive = done + self.cfg.latency_s
        if self.next_cut(station, now) <= arrive:
            stats.lost += 1
            return None
        return arrive
