"""The simulator's ground network: the daemons' station and aggregator machines driven on the
virtual clock, audited from their stores (every update a station ACKed is aggregated once)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from orbitfl.apps.sim.orbits import Window, write_csv
from orbitfl.apps.sim.runner import SimConfig, SimResult, Simulation


def windows_csv(tmp_path: Path) -> Path:
    """Two satellites taking turns over two stations: sat-00 always over "north", sat-01 over
    "north" and "south" alternately, 40 min apart, windows of 8 min at 9600 bit/s."""
    ws = []
    for k in range(60):
        t = 2400.0 * k
        ws.append(Window("sat-00", "north", t + 100.0, t + 580.0, 9600.0))
        ws.append(Window("sat-01", "north" if k % 2 else "south", t + 1300.0, t + 1780.0, 9600.0))
    return write_csv(ws, tmp_path / "w.csv")


def cfg(csv: Path, **kw: object) -> SimConfig:
    base: dict[str, object] = dict(
        sats=2,
        planes=1,
        windows_csv=str(csv),
        orbits=100.0,
        epochs=1,
        seconds_per_epoch=60.0,
        partition="iid",
        rounds=4,
        codec="topk:0.05+ef | quant:8 | zstd",
    )
    base.update(kw)
    return SimConfig.from_dict(base)


def exactly_once(res: SimResult) -> None:
    a = res.audit
    assert a["lost"] == 0 and a["not_from_a_station"] == 0, a
    assert a["folded"] == a["aggregated"], a  # no update folded twice
    assert a["aggregated"] + a["pending_at_stations"] + a["dropped_at_stations"] == a["acked_by_stations"], a
    assert res.accepted_updates == sum(r.updates for r in res.rounds)


def test_stations_forward_to_the_aggregator_and_each_update_counts_once(tmp_path: Path) -> None:
    csv = windows_csv(tmp_path)
    res = Simulation(cfg(csv, topology="stations"), work=tmp_path / "s").run()
    assert [r.updates for r in res.rounds] == [2] * 4
    exactly_once(res)
    assert res.audit["aggregated"] >= 8
    # both stations carried updates: sat-01 passes over "south" every other window
    assert res.station_stats["south"]["relayed"] > 0 and res.station_stats["north"]["relayed"] > 0
    # updates went up the backhaul, model versions came down it
    assert res.backhaul_up_bytes > 0 and res.backhaul_down_bytes > res.backhaul_up_bytes
    assert res.rounds[-1].accuracy is not None and res.rounds[-1].accuracy > res.rounds[0].accuracy  # type: ignore[operator]


def test_same_seed_same_network_run(tmp_path: Path) -> None:
    csv = windows_csv(tmp_path)
    out = {"mean_up_s": 3000.0, "mean_down_s": 2000.0}
    a = Simulation(
        cfg(csv, topology="stations", backhaul_outages=out, seed=5, rounds=6), work=tmp_path / "a"
    ).run()
    b = Simulation(
        cfg(csv, topology="stations", backhaul_outages=out, seed=5, rounds=6), work=tmp_path / "b"
    ).run()
    assert [asdict(r) for r in a.rounds] == [asdict(r) for r in b.rounds]
    assert (a.backhaul_up_bytes, a.backhaul_down_bytes, a.backhaul_frames_lost) == (
        b.backhaul_up_bytes,
        b.backhaul_down_bytes,
        b.backhaul_frames_lost,
    )
    assert a.audit == b.audit
    assert a.audit["max_forward_delay_s"] > 60.0  # the outages held updates at the stations


def test_an_outage_delays_updates_but_loses_none_and_counts_none_twice(tmp_path: Path) -> None:
    csv = windows_csv(tmp_path)
    # "south" cut off from 1350 s to 3000 s: sat-01's first update, ACKed there at ~1391 s in its
    # first pass, waits in the station's relay outbox until the link is back (its next pass, over
    # "north", is at 3700 s), and round 1 closes only then
    cut = ["south:1350:3000"]
    up = Simulation(cfg(csv, topology="stations"), work=tmp_path / "up").run()
    down = Simulation(cfg(csv, topology="stations", backhaul_outages=cut), work=tmp_path / "down").run()
    exactly_once(up)
    exactly_once(down)
    assert len(down.rounds) == len(up.rounds) == 4
    assert up.rounds[0].time_s < 1780.0  # within sat-01's first window: forwarded at once
    assert up.audit["max_forward_delay_s"] < 1.0
    assert down.rounds[0].time_s == pytest.approx(3000.0 + 0.05)  # held through the outage
    assert down.audit["max_forward_delay_s"] > 3000.0 - 1780.0  # longer than sat-01's window
    assert down.audit["acked_by_stations"] == down.audit["aggregated"]  # then aggregated, once


def test_one_station_network_learns_what_the_single_ground_learns(tmp_path: Path) -> None:
    # One antenna: the station relays each update to the aggregator at once (no latency) and
    # serves each version as it comes, so the federation is the single ground's, round for round;
    # only control frames differ (the station's own ids and the relay's ACKs in the log).
    csv = windows_csv(tmp_path)
    one = dict(windows_csv=None, sats=3, planes=1, orbits=6.0, stations=["svalbard:78.23:15.39:5"])
    single = Simulation(cfg(csv, **one), work=tmp_path / "single").run()
    net = Simulation(
        cfg(csv, **one, topology="stations", backhaul_latency_s=0.0), work=tmp_path / "net"
    ).run()
    assert len(single.rounds) == len(net.rounds) == 4
    for a, b in zip(single.rounds, net.rounds, strict=True):
        assert (a.round, a.version, a.updates, a.accuracy) == (b.round, b.version, b.updates, b.accuracy)
        assert a.uplink_update_bytes == b.uplink_update_bytes
        assert abs(a.time_s - b.time_s) < 1.0
    assert single.backhaul_up_bytes == 0 and not single.audit  # the single ground has no backhaul
    exactly_once(net)
