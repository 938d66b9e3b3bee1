"""Contact windows between satellites and ground stations.

Three sources, one result (a sorted list of :class:`Window`):

- a Walker-delta constellation ``i: t/p/f`` on circular orbits (two-body Kepler motion, spherical
  Earth rotating at the sidereal rate, no J2 or drag): enough to get the timing of passes right
  (period, revisit gaps, durations of 5-12 min in LEO), which is what federated rounds feel;
- two-line element sets propagated with the ``sgp4`` library (``pip install 'orbitfl[sim]'``);
- a CSV the user gives (``satellite,station,start_s,end_s,rate_bps``), e.g. from an operator's
  pass schedule.

A satellite is in contact with a station while its elevation is above the station's mask. Each
window carries a data rate (bits/s) so the simulator can bound what crosses it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

MU_EARTH = 398_600.4418  # km^3/s^2
R_EARTH = 6_371.0  # km, spherical Earth
OMEGA_EARTH = 7.292_115_9e-5  # rad/s, sidereal rotation
CSV_COLUMNS = ("satellite", "station", "start_s", "end_s", "rate_bps")

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Station:
    name: str
    lat_deg: float
    lon_deg: float
    min_elevation_deg: float = 10.0
    rate_bps: float = 9600.0  # UHF CubeSat radio; the same both ways unless down_rate_bps is set
    alt_km: float = 0.0

    def __post_init__(self) -> None:
        if not self.name or "," in self.name:
            raise ValueError(f"station name must be non-empty without ',', got {self.name!r}")
        if not -90.0 <= self.lat_deg <= 90.0:
            raise ValueError(f"station {self.name!r}: lat must be in [-90, 90], got {self.lat_deg}")
        if not -180.0 <= self.lon_deg <= 360.0:
            raise ValueError(f"station {self.name!r}: lon must be in [-180, 360], got {self.lon_deg}")
        if not 0.0 <= self.min_elevation_deg < 90.0:
            raise ValueError(
                f"station {self.name!r}: min_elevation_deg must be in [0, 90), got {self.min_elevation_deg}"
            )
        if not self.rate_bps > 0:
            raise ValueError(f"station {self.name!r}: rate_bps must be > 0, got {self.rate_bps}")

    def ecef(self) -> tuple[F64, F64]:
        """Position (km) and local 'up' unit vector in the Earth-fixed frame."""
        lat, lon = math.radians(self.lat_deg), math.radians(self.lon_deg)
        up = np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
        return up * (R_EARTH + self.alt_km), up


@dataclass(frozen=True)
class Window:
    satellite: str
    station: str
    start: float  # seconds since the epoch of the simulation
    end: float
    rate_bps: float
    max_elevation_deg: float = float("nan")

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def capacity_bytes(self) -> int:
        """What the window can carry one way at its rate."""
        return int(self.duration * self.rate_bps / 8)


@dataclass(frozen=True)
class Walker:
    """Walker-delta constellation ``inclination: sats/planes/phasing`` at one altitude."""

    sats: int = 12
    planes: int = 3
    phasing: int = 0
    altitude_km: float = 550.0
    inclination_deg: float = 97.6  # sun-synchronous at 550 km

    def __post_init__(self) -> None:
        if self.sats < 1 or self.planes < 1:
            raise ValueError(f"sats and planes must be >= 1, got {self.sats}/{self.planes}")
        if self.sats % self.planes:
            raise ValueError(f"sats ({self.sats}) must be a multiple of planes ({self.planes})")
        if not 0 <= self.phasing < self.planes:
            raise ValueError(f"phasing must be in [0, planes), got {self.phasing}")
        if not 160.0 <= self.altitude_km <= 36_000.0:
            raise ValueError(f"altitude_km must be in [160, 36000], got {self.altitude_km}")
        if not 0.0 <= self.inclination_deg <= 180.0:
            raise ValueError(f"inclination_deg must be in [0, 180], got {self.inclination_deg}")

    @property
    def radius_km(self) -> float:
        return R_EARTH + self.altitude_km

    @property
    def period_s(self) -> float:
        """Kepler's third law: T = 2π √(a³/μ)."""
        return 2.0 * math.pi * math.sqrt(self.radius_km**3 / MU_EARTH)

    def names(self) -> list[str]:
        return [f"sat-{i:02d}" for i in range(self.sats)]

    def elements(self) -> tuple[F64, F64]:
        """Right ascension of the ascending node and argument of latitude at t=0 (radians)."""
        per = self.sats // self.planes
        k = np.arange(self.sats)
        plane, slot = k // per, k % per
        raan = 2.0 * math.pi * plane / self.planes
        u0 = 2.0 * math.pi * (slot / per + self.phasing * plane / self.sats)
        return raan.astype(np.float64), u0.astype(np.float64)

    def positions_ecef(self, t: F64) -> F64:
        """Positions [sats, len(t), 3] in km, Earth-fixed (inertial frame aligned at t=0)."""
        raan, u0 = self.elements()
        inc = math.radians(self.inclination_deg)
        n = 2.0 * math.pi / self.period_s
        u = u0[:, None] + n * t[None, :]
        cu, su = np.cos(u), np.sin(u)
        co, so = np.cos(raan)[:, None], np.sin(raan)[:, None]
        r = self.radius_km
        x = r * (cu * co - su * math.cos(inc) * so)
        y = r * (cu * so + su * math.cos(inc) * co)
        z = r * su * math.sin(inc) * np.ones_like(co)
        return _inertial_to_fixed(np.stack([x, y, z], axis=-1), t)


def _inertial_to_fixed(p: F64, t: F64) -> F64:
    th = OMEGA_EARTH * t
    c, s = np.cos(th), np.sin(th)
    x, y = p[..., 0], p[..., 1]
    return np.stack([c * x + s * y, -s * x + c * y, p[..., 2]], axis=-1)


def elevation_deg(pos_ecef: F64, station: Station) -> F64:
    """Elevation of each position (…, 3) above the station's horizon, degrees."""
    site, up = station.ecef()
    d = pos_ecef - site
    rng = np.linalg.norm(d, axis=-1)
    out: F64 = np.degrees(np.arcsin(np.clip((d @ up) / rng, -1.0, 1.0)))
    return out


def windows_from_elevation(
    names: Sequence[str], t: F64, elev: F64, station: Station, *, down_to: float | None = None
) -> list[Window]:
    """Windows where ``elev`` [sats, len(t)] is above the station's mask; crossings are refined by
    linear interpolation between samples. A pass cut by the start or end of ``t`` is clipped."""
    mask = station.min_elevation_deg
    out: list[Window] = []
    for i, name in enumerate(names):
        e = elev[i]
        above = e >= mask
        if not above.any():
            continue
        edges = np.flatnonzero(np.diff(above.astype(np.int8)))
        starts = [0] if above[0] else []
        ends: list[int] = []
        for j in edges:
            (starts if above[j + 1] else ends).append(int(j + 1))
        if above[-1]:
            ends.append(len(t))
        for a, b in zip(starts, ends, strict=True):
            t0 = float(t[0]) if a == 0 else _cross(t, e, a - 1, mask)
            t1 = float(t[-1]) if b == len(t) else _cross(t, e, b - 1, mask)
            if t1 > t0:
                out.append(Window(name, station.name, t0, t1, station.rate_bps, float(e[a:b].max())))
    return out


def _cross(t: F64, e: F64, j: int, level: float) -> float:
    """Time where elevation crosses ``level`` between samples j and j+1."""
    e0, e1 = float(e[j]), float(e[j + 1])
    f = 0.5 if e1 == e0 else (level - e0) / (e1 - e0)
    return float(t[j] + f * (t[j + 1] - t[j]))


def walker_windows(
    walker: Walker, stations: Sequence[Station], duration_s: float, *, step_s: float = 10.0
) -> list[Window]:
    """Every contact window of the constellation with the stations over ``[0, duration_s]``."""
    if not stations:
        raise ValueError("at least one ground station is needed")
    if not duration_s > 0 or not step_s > 0:
        raise ValueError(f"duration_s and step_s must be > 0, got {duration_s}, {step_s}")
    t = np.arange(0.0, duration_s + step_s, step_s)
    t[-1] = min(t[-1], duration_s)
    out: list[Window] = []
    # In blocks of time, so a long run never holds [sats, all samples, 3] at once.
    block = 20_000
    names = walker.names()
    for lo in range(0, len(t), block - 1):
        tb = t[lo : lo + block]
        if len(tb) < 2:
            break
        pos = walker.positions_ecef(tb)
        for st in stations:
            out.extend(windows_from_elevation(names, tb, elevation_deg(pos, st), st))
    return sort_windows(_join_block_edges(out))


def _join_block_edges(ws: list[Window]) -> list[Window]:
    """Passes split at a block boundary come back as two windows that touch: join them."""
    by_key: dict[tuple[str, str], list[Window]] = {}
    for w in sorted(ws, key=lambda w: (w.satellite, w.station, w.start)):
        lst = by_key.setdefault((w.satellite, w.station), [])
        if lst and abs(lst[-1].end - w.start) < 1e-9:
            p = lst[-1]
            lst[-1] = Window(
                p.satellite,
                p.station,
                p.start,
                w.end,
                p.rate_bps,
                max(p.max_elevation_deg, w.max_elevation_deg),
            )
        else:
            lst.append(w)
    return [w for lst in by_key.values() for w in lst]


def sort_windows(ws: Iterable[Window]) -> list[Window]:
    return sorted(ws, key=lambda w: (w.start, w.satellite, w.station))


def merge_overlaps(ws: Iterable[Window]) -> list[Window]:
    """Per satellite, overlapping windows (two stations in view at once) become one link session
    at the faster rate: the satellite has one radio."""
    out: list[Window] = []
    per: dict[str, list[Window]] = {}
    for w in sort_windows(ws):
        per.setdefault(w.satellite, []).append(w)
    for lst in per.values():
        cur = lst[0]
        for w in lst[1:]:
            if w.start <= cur.end:
                cur = Window(
                    cur.satellite,
                    cur.station if cur.rate_bps >= w.rate_bps else w.station,
                    cur.start,
                    max(cur.end, w.end),
                    max(cur.rate_bps, w.rate_bps),
                    max(cur.max_elevation_deg, w.max_elevation_deg),
                )
            else:
                out.append(cur)
                cur = w
        out.append(cur)
    return sort_windows(out)


# --- TLEs with sgp4 ----------------------------------------------------------------------------


def _gmst(jd_ut1: F64) -> F64:
    """Greenwich mean sidereal time (IAU 1982), radians: TEME -> Earth-fixed is a rotation by it."""
    tu = (jd_ut1 - 2451545.0) / 36525.0
    sec = 67310.54841 + (876600.0 * 3600 + 8640184.812866) * tu + 0.093104 * tu**2 - 6.2e-6 * tu**3
    return np.mod(np.radians(sec / 240.0), 2.0 * math.pi)


def parse_tles(text: str) -> list[tuple[str, str, str]]:
    """(name, line1, line2) from a TLE file with or without name lines."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    out: list[tuple[str, str, str]] = []
    i = 0
    while i < len(lines):
        name = None
        if not lines[i].startswith("1 "):
            name = lines[i].strip().lstrip("0 ").strip()
            i += 1
        if i + 1 >= len(lines) or not lines[i].startswith("1 ") or not lines[i + 1].startswith("2 "):
            raise ValueError(f"TLE text: expected a '1 ...' and a '2 ...' line after line {i}")
        l1, l2 = lines[i], lines[i + 1]
        out.append((name or f"sat-{l1[2:7].strip()}", l1, l2))
        i += 2
    if not out:
        raise ValueError("TLE text holds no element set")
    return out


def tle_windows(
    tles: Sequence[tuple[str, str, str]],
    stations: Sequence[Station],
    duration_s: float,
    *,
    start_jd: float | None = None,
    step_s: float = 10.0,
) -> list[Window]:
    """Windows of satellites given as TLEs, propagated with ``sgp4`` from ``start_jd`` (default:
    the epoch of the first element set)."""
    try:
        from sgp4.api import Satrec  # type: ignore[import-untyped]
    except ImportError:
        raise ImportError("TLE propagation uses the sgp4 library: pip install 'orbitfl[sim]'") from None
    if not stations:
        raise ValueError("at least one ground station is needed")
    sats = [Satrec.twoline2rv(l1, l2) for _, l1, l2 in tles]
    jd0 = float(start_jd) if start_jd is not None else float(sats[0].jdsatepoch + sats[0].jdsatepochF)
    t = np.arange(0.0, duration_s + step_s, step_s)
    jd_full = jd0 + t / 86400.0
    jd, fr = np.floor(jd_full), jd_full - np.floor(jd_full)
    th = _gmst(jd_full)
    c, s = np.cos(th), np.sin(th)
    pos = np.empty((len(sats), len(t), 3))
    for k, sat in enumerate(sats):
        err, r, _ = sat.sgp4_array(jd, fr)
        if np.any(err):
            raise ValueError(f"sgp4 could not propagate {tles[k][0]!r} (error code {int(np.max(err))})")
        pos[k, :, 0] = c * r[:, 0] + s * r[:, 1]
        pos[k, :, 1] = -s * r[:, 0] + c * r[:, 1]
        pos[k, :, 2] = r[:, 2]
    names = [n for n, _, _ in tles]
    out: list[Window] = []
    for st in stations:
        out.extend(windows_from_elevation(names, t, elevation_deg(pos, st), st))
    return sort_windows(out)


# --- CSV ------------------------------------------------------------------------------------------


def write_csv(ws: Iterable[Window], path: str | Path) -> Path:
    p = Path(path)
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for x in ws:
            w.writerow([x.satellite, x.station, f"{x.start:.3f}", f"{x.end:.3f}", f"{x.rate_bps:g}"])
    return p


def read_csv(path: str | Path) -> list[Window]:
    """Windows from a CSV with the header ``satellite,station,start_s,end_s,rate_bps``. Every bad
    row is a ValueError naming the file, line and column."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read windows CSV {p}: {exc.strerror or exc}") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise ValueError(f"{p}: empty; expected a header {','.join(CSV_COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{p}: header lacks column(s) {missing}; expected {','.join(CSV_COLUMNS)}")
    col = {c: header.index(c) for c in CSV_COLUMNS}
    out: list[Window] = []
    for n, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{p} line {n}: {len(row)} fields, the header has {len(header)}")
        vals: dict[str, float] = {}
        for c in ("start_s", "end_s", "rate_bps"):
            raw = row[col[c]].strip()
            try:
                v = float(raw)
            except ValueError:
                raise ValueError(f"{p} line {n}: {c} {raw!r} is not a number") from None
            if not math.isfinite(v):
                raise ValueError(f"{p} line {n}: {c} must be finite, got {raw!r}")
            vals[c] = v
        sat, st = row[col["satellite"]].strip(), row[col["station"]].strip()
        if not sat or not st:
            raise ValueError(f"{p} line {n}: satellite and station must be non-empty")
        if vals["start_s"] < 0 or vals["end_s"] <= vals["start_s"]:
            raise ValueError(
                f"{p} line {n}: need 0 <= start_s < end_s, got {vals['start_s']} .. {vals['end_s']}"
            )
        if vals["rate_bps"] <= 0:
            raise ValueError(f"{p} line {n}: rate_bps must be > 0, got {vals['rate_bps']}")
        out.append(Window(sat, st, vals["start_s"], vals["end_s"], vals["rate_bps"]))
    if not out:
        raise ValueError(f"{p}: no windows after the header")
    return sort_windows(out)


def parse_station(text: str) -> Station:
    """``name:lat:lon[:min_elevation[:rate_bps]]``, e.g. ``svalbard:78.23:15.39:5:9600``."""
    parts = text.split(":")
    if not 3 <= len(parts) <= 5:
        raise ValueError(f"station {text!r}: expected name:lat:lon[:min_elevation_deg[:rate_bps]]")
    try:
        nums = [float(x) for x in parts[1:]]
    except ValueError:
        raise ValueError(f"station {text!r}: lat, lon, elevation and rate must be numbers") from None
    kw: dict[str, float] = {}
    if len(nums) > 2:
        kw["min_elevation_deg"] = nums[2]
    if len(nums) > 3:
        kw["rate_bps"] = nums[3]
    return Station(parts[0], nums[0], nums[1], **kw)


DEFAULT_STATIONS = (
    Station("svalbard", 78.23, 15.39, 5.0),
    Station("toulouse", 43.60, 1.44, 10.0),
    Station("hawaii", 19.82, -155.47, 10.0),
)
