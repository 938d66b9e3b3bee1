"""Orbit geometry and contact windows: Kepler period, elevation mask, LEO pass durations, CSV and
TLE inputs with clear errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from orbitfl.apps.sim.orbits import (
    MU_EARTH,
    OMEGA_EARTH,
    R_EARTH,
    Station,
    Walker,
    elevation_deg,
    parse_station,
    parse_tles,
    read_csv,
    tle_windows,
    walker_windows,
    write_csv,
)

STATIONS = [Station("svalbard", 78.23, 15.39, 5.0), Station("toulouse", 43.6, 1.44, 10.0)]
ISS = """ISS (ZARYA)
1 25544U 98067A   08264.51782528 -.00002182  00000-0 -11606-4 0  2927
2 25544  51.6416 247.4627 0006703 130.5360 325.0288 15.72125391563537
"""


def test_period_is_keplers_and_the_orbit_is_circular() -> None:
    w = Walker(sats=6, planes=2, altitude_km=550.0, inclination_deg=53.0)
    a = R_EARTH + 550.0
    assert w.period_s == pytest.approx(2 * math.pi * math.sqrt(a**3 / MU_EARTH))
    assert 5600 < w.period_s < 5800  # ~95.5 min at 550 km
    t = np.array([0.0, w.period_s / 4, w.period_s])
    p = w.positions_ecef(t)
    assert np.allclose(np.linalg.norm(p, axis=-1), a)
    # after one period the satellite is where it started in inertial space: in the Earth-fixed
    # frame that is the start rotated back by the Earth's turn
    th = OMEGA_EARTH * w.period_s
    rot = np.array([[math.cos(th), math.sin(th), 0], [-math.sin(th), math.cos(th), 0], [0, 0, 1]])
    assert np.allclose(p[:, 2], p[:, 0] @ rot.T, atol=1e-6)
    # a quarter period later it has moved 90 degrees along the orbit (relative to inertial space)
    th4 = OMEGA_EARTH * w.period_s / 4
    c, s = math.cos(th4), math.sin(th4)
    back = np.stack([c * p[:, 1, 0] - s * p[:, 1, 1], s * p[:, 1, 0] + c * p[:, 1, 1], p[:, 1, 2]], axis=-1)
    cosang = np.sum(back * p[:, 0], axis=-1) / a**2
    assert np.allclose(cosang, 0.0, atol=1e-9)
    assert np.degrees(np.arcsin(np.abs(p[:, :, 2]).max() / a)) == pytest.approx(53.0, abs=0.5)


def test_windows_occur_respect_the_mask_and_last_minutes() -> None:
    w = Walker(sats=6, planes=2, phasing=1, altitude_km=550.0, inclination_deg=97.6)
    ws = walker_windows(w, STATIONS, 86400.0, step_s=5.0)
    assert {x.satellite for x in ws} == set(w.names())  # every satellite gets passes in a day
    durations = np.array([x.duration for x in ws])
    full = durations[[x.start > 0 and x.end < 86400 for x in ws]]
    assert full.max() < 13 * 60
    assert 5 * 60 < np.median(full) < 12 * 60
    stations = {s.name: s for s in STATIONS}
    for x in ws:
        st = stations[x.station]
        idx = w.names().index(x.satellite)
        inside = np.linspace(x.start + 1, x.end - 1, 7)
        outside = np.array([x.start - 20.0, x.end + 20.0])
        outside = outside[(outside > 0) & (outside < 86400)]
        e_in = elevation_deg(w.positions_ecef(inside)[idx], st)
        assert (e_in >= st.min_elevation_deg - 0.05).all(), (x, e_in)
        if outside.size:
            e_out = elevation_deg(w.positions_ecef(outside)[idx], st)
            assert (e_out < st.min_elevation_deg).all(), (x, e_out)
        assert x.max_elevation_deg >= st.min_elevation_deg


def test_a_higher_mask_gives_less_contact() -> None:
    w = Walker(sats=3, planes=1, inclination_deg=97.6)
    low = walker_windows(w, [Station("s", 60.0, 10.0, 5.0)], 43200.0)
    high = walker_windows(w, [Station("s", 60.0, 10.0, 30.0)], 43200.0)
    assert sum(x.duration for x in high) < 0.6 * sum(x.duration for x in low)
    assert len(high) <= len(low)


def test_windows_csv_roundtrip(tmp_path: Path) -> None:
    ws = walker_windows(Walker(sats=3, planes=1), STATIONS, 20000.0)
    back = read_csv(write_csv(ws, tmp_path / "w.csv"))
    assert [(x.satellite, x.station) for x in back] == [(x.satellite, x.station) for x in ws]
    assert np.allclose([x.start for x in back], [x.start for x in ws], atol=1e-3)
    assert back[0].capacity_bytes == int(back[0].duration * back[0].rate_bps / 8)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("satellite,station,start_s,end_s\n", "rate_bps"),
        ("satellite,station,start_s,end_s,rate_bps\n", "no windows"),
        ("satellite,station,start_s,end_s,rate_bps\na,b,10,x,9600\n", "line 2: end_s 'x' is not a number"),
        ("satellite,station,start_s,end_s,rate_bps\na,b,10,5,9600\n", "line 2: need 0 <= start_s < end_s"),
        ("satellite,station,start_s,end_s,rate_bps\na,b,1,5,9600\na,b,10,20,0\n", "line 3: rate_bps"),
        ("satellite,station,start_s,end_s,rate_bps\na,b,1,5\n", "line 2: 4 fields"),
        ("satellite,station,start_s,end_s,rate_bps\n,b,1,5,10\n", "non-empty"),
        ("satellite,station,start_s,end_s,rate_bps\na,b,1,inf,10\n", "finite"),
    ],
)
def test_windows_csv_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "w.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_csv(p)


def test_missing_csv_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read windows CSV"):
        read_csv(tmp_path / "nope.csv")


def test_bad_constellation_and_station_values() -> None:
    with pytest.raises(ValueError, match="multiple of planes"):
        Walker(sats=10, planes=3)
    with pytest.raises(ValueError, match="altitude_km"):
        Walker(altitude_km=50.0)
    with pytest.raises(ValueError, match="lat"):
        Station("x", 95.0, 0.0)
    with pytest.raises(ValueError, match="min_elevation_deg"):
        parse_station("x:10:20:95")
    with pytest.raises(ValueError, match="expected name:lat:lon"):
        parse_station("x:10")
    with pytest.raises(ValueError, match="must be numbers"):
        parse_station("x:north:20")
    s = parse_station("kiruna:67.86:20.96:5:19200")
    assert (s.min_elevation_deg, s.rate_bps) == (5.0, 19200.0)


def test_tle_windows_with_sgp4() -> None:
    pytest.importorskip("sgp4")
    tles = parse_tles(ISS)
    assert tles[0][0] == "ISS (ZARYA)"
    ws = tle_windows(tles, [Station("toulouse", 43.6, 1.44, 10.0)], 2 * 86400.0)
    assert len(ws) >= 4
    full = [x.duration for x in ws if x.start > 0 and x.end < 2 * 86400]
    assert 2 * 60 < max(full) < 12 * 60
    with pytest.raises(ValueError, match=r"expected a '1 \.\.\.'"):
        parse_tles("ISS\n1 25544U\n")
