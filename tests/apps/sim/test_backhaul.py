"""The station<->aggregator links on the virtual clock: latency, FIFO order, outages that cut frames
in flight, seeded random outages, and the config's refusals."""

from __future__ import annotations

import math

import pytest

from orbitfl.apps.sim.backhaul import (
    Backhaul,
    BackhaulConfig,
    Outage,
    RandomOutages,
    outage_schedule,
    parse_outages,
)
from orbitfl.apps.sim.runner import SimConfig


def link(
    outages: str | list[str] | None = None, *, rate: float | None = None, latency: float = 0.5
) -> Backhaul:
    spec = parse_outages(outages)
    cfg = BackhaulConfig(latency, rate, spec)
    return Backhaul(cfg, outage_schedule(spec, ["a", "b"], 10_000.0, seed=0))


def test_a_frame_arrives_after_the_latency_and_frames_keep_their_order() -> None:
    bh = link(rate=8000.0)  # 1000 B/s
    t1 = bh.send("a", 1000, 10.0, upstream=True)
    t2 = bh.send("a", 500, 10.0, upstream=True)  # queued behind the first
    t3 = bh.send("a", 500, 10.0, upstream=False)  # the other direction has its own queue
    assert t1 == pytest.approx(11.5)
    assert t2 == pytest.approx(12.0)
    assert t3 == pytest.approx(11.0)
    assert bh.up.frames == 2 and bh.up.bytes == 1500 and bh.up.lost == 0
    assert bh.down.bytes == 500


def test_an_outage_refuses_frames_and_cuts_those_in_flight() -> None:
    bh = link("a:100:200", latency=5.0)
    assert bh.send("a", 10, 96.0, upstream=True) is None  # would arrive at 101, after the cut
    assert bh.send("a", 10, 150.0, upstream=True) is None  # down
    assert bh.send("b", 10, 150.0, upstream=True) == pytest.approx(155.0)  # another station's link
    assert bh.send("a", 10, 200.0, upstream=True) == pytest.approx(205.0)  # up again at the end
    assert bh.up.lost == 2
    assert bh.up.bytes == 30  # the refused frame never went on the link, the cut one did
    assert bh.transitions() == [(100.0, "a", False), (200.0, "a", True)]
    assert not bh.is_up("a", 100.0) and bh.is_up("a", 200.0)
    assert bh.next_cut("a", 0.0) == 100.0 and bh.next_cut("a", 200.0) == math.inf


def test_schedules_merge_overlaps_and_name_only_known_stations() -> None:
    spec = parse_outages([{"station": "a", "start_s": 10, "end_s": 30}, "a:20:40", "b:5:6"])
    assert outage_schedule(spec, ["a", "b"], 100.0, 0) == {"a": [(10.0, 40.0)], "b": [(5.0, 6.0)]}
    with pytest.raises(ValueError, match=r"not in the network: \['c'\]"):
        outage_schedule(parse_outages("c:1:2"), ["a", "b"], 100.0, 0)


def test_random_outages_are_seeded_per_station_with_the_asked_means() -> None:
    spec = parse_outages({"mean_up_s": 3000.0, "mean_down_s": 1000.0})
    assert spec == RandomOutages(3000.0, 1000.0)
    one = outage_schedule(spec, ["a", "b"], 4e6, seed=1)
    again = outage_schedule(spec, ["b", "a", "c"], 4e6, seed=1)
    other = outage_schedule(spec, ["a", "b"], 4e6, seed=2)
    assert one["a"] == again["a"] and one["b"] == again["b"]  # adding a station changes no other's
    assert one["a"] != one["b"] and one["a"] != other["a"]
    down = sum(e - s for s, e in one["a"])
    assert 0.2 < down / 4e6 < 0.3  # mean down / (mean up + mean down) = 0.25
    assert all(s < e <= 4e6 for s, e in one["a"])
    assert parse_outages("random:60:30") == RandomOutages(60.0, 30.0)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("a:5:1", "must be after start_s"),
        ("a:x:1", "must be numbers"),
        ("a:1", "STATION:START_S:END_S"),
        ([{"station": "a", "start_s": -1, "end_s": 3}], ">= 0"),
        ([{"station": "a", "begin": 1}], "unknown key"),
        ({"mean_up_s": 10}, "needs both"),
        ({"mean_up_s": 10, "mean_down_s": 0}, "positive"),
        ({"mean_up_s": 10, "mean_down_s": 5, "seed": "x"}, "integer"),
        ("random:1", "random:MEAN_UP_S:MEAN_DOWN_S"),
        (7, "expected a list"),
    ],
)
def test_bad_outages_are_refused_by_name(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_outages(raw)


def test_topology_and_backhaul_keys_are_checked_in_the_sim_config() -> None:
    assert SimConfig().backhaul() is None  # the single ground stays the default
    cfg = SimConfig(topology="stations", backhaul_outages=["svalbard:0:60"])
    bh = cfg.backhaul()
    assert bh is not None and bh.latency_s == 0.05 and bh.outages == (Outage("svalbard", 0.0, 60.0),)
    with pytest.raises(ValueError, match="topology must be one of single, stations"):
        SimConfig(topology="mesh")
    with pytest.raises(ValueError, match="backhaul_latency_s need topology = 'stations'"):
        SimConfig(backhaul_latency_s=0.1)
    with pytest.raises(ValueError, match="backhaul_latency_s must be"):
        SimConfig(topology="stations", backhaul_latency_s=-1.0)
    with pytest.raises(ValueError, match="backhaul_rate_bps must be"):
        SimConfig(topology="stations", backhaul_rate_bps=0.0)
    with pytest.raises(ValueError, match="must be after"):
        SimConfig.from_dict({"topology": "stations", "backhaul_outages": ["svalbard:9:3"]})
