"""The simulator drives the real ground and agent machines: rate-bounded windows, resumed
transfers counted once, duplicates counted once, determinism by seed, clear refusals."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest

from orbitfl.apps.sim.orbits import Window, write_csv
from orbitfl.apps.sim.runner import SimConfig, Simulation, frame_type, load_windows
from orbitfl.wire.compact import as_full


def small(**kw: object) -> SimConfig:
    base: dict[str, object] = dict(
        sats=3,
        planes=1,
        orbits=6.0,
        epochs=1,
        seconds_per_epoch=60.0,
        stations=["svalbard:78.23:15.39:5"],
        partition="iid",
    )
    base.update(kw)
    return SimConfig.from_dict(base)


def test_a_payload_larger_than_a_window_completes_over_several_and_counts_once(tmp_path: Path) -> None:
    # 300 B/s for 40 s = 12 kB per window; the fp32 mlp update is ~40 kB, so each update (and each
    # model going up... and down) has to be resumed across several windows.
    ws = [
        Window(f"sat-{i:02d}", "gs", 300.0 * k + 37.0 * i, 300.0 * k + 37.0 * i + 40.0, 2400.0)
        for k in range(400)
        for i in range(2)
    ]
    csv = write_csv(ws, tmp_path / "w.csv")
    cfg = small(
        sats=2,
        windows_csv=str(csv),
        orbits=100.0,
        rounds=2,
        chunk_bytes=4096,
        retransmit_s=30.0,
        heartbeat_s=600.0,
    )
    sim = Simulation(cfg, work=tmp_path / "run")
    windows_used = {}
    res = sim.run()
    for n, st in res.agent_stats.items():
        windows_used[n] = st["windows"]
    assert len(res.rounds) == 2, res
    update_frame = res.n_params * 4
    assert update_frame > 3 * 12_000
    assert res.frames_lost > 0  # chunks cut by the end of windows
    # every agent needed many windows for a task down plus an update up per round
    assert min(windows_used.values()) >= 2 * 2 * (update_frame // 12_000)
    # counted once: two updates per round reached the strategy, each exactly once
    assert res.accepted_updates == 4
    assert [r.updates for r in res.rounds] == [2, 2]
    # bytes on the air cover each update at least once, and not wildly more (resume, not restart)
    assert 4 * update_frame <= res.uplink_update_bytes < 4 * update_frame * 1.6
    # the agents were told each pass's budget, so nothing they sent was cut by a window's end
    assert res.uplink_frames_lost == 0


def test_duplicated_frames_are_counted_once_by_the_real_ground(tmp_path: Path) -> None:
    # a compressed update fits one frame, so a duplicated delivery repeats its UPDATE id
    cfg = small(duplicate_rate=0.5, rounds=3, orbits=20.0, codec="topk:0.05+ef | quant:8 | zstd")
    sim = Simulation(cfg, work=tmp_path / "run")
    res = sim.run()
    assert res.frames_duplicated > 0
    assert res.duplicates_seen > 0  # the ground saw repeated UPDATE ids ...
    assert [r.updates for r in res.rounds] == [3, 3, 3]  # ... and folded each update in once
    assert res.accepted_updates == 9


def test_every_uplink_byte_is_counted_once_per_transmission(tmp_path: Path) -> None:
    # Windows long and fast enough that no frame is cut: then every byte the satellites put on the
    # air reached the real ground, which counts what it receives itself; duplicated deliveries are
    # bytes the link carried twice, so both sides count them twice.
    ws = [
        Window(f"sat-{i:02d}", "gs", 3000.0 * k + 100.0 * i, 3000.0 * k + 100.0 * i + 900.0, 1e7)
        for k in range(60)
        for i in range(2)
    ]
    cfg = small(
        sats=2,
        windows_csv=str(write_csv(ws, tmp_path / "w.csv")),
        orbits=40.0,
        rounds=3,
        duplicate_rate=0.3,
        codec="topk:0.05+ef | quant:8 | zstd",
    )
    sim = Simulation(cfg, work=tmp_path / "run")
    res = sim.run()
    assert len(res.rounds) == 3 and res.frames_duplicated > 0
    assert res.frames_lost == 0
    # the run stops when the last round closes: frames still on their way were sent, not received
    in_flight = sum(len(data[2]) for _, _, kind, data in sim._heap if kind == "up")
    assert res.uplink_bytes == sim.ground.bytes_in + in_flight  # the ground counts what it receives
    assert sum(res.uplink_by_type.values()) == res.uplink_bytes
    assert res.uplink_by_type.get("UPDATE", 0) + res.uplink_by_type.get("CHUNK", 0) == res.uplink_update_bytes
    assert res.uplink_by_type["HELLO"] > 0  # control traffic is on the air and in the total
    assert res.control_uplink_bytes == res.uplink_bytes - res.uplink_update_bytes > 0
    assert res.float32_bytes == res.accepted_updates * res.n_params * 4


def test_same_seed_same_run_other_seed_other_run(tmp_path: Path) -> None:
    wins = load_windows(small())
    a = Simulation(small(seed=3), work=tmp_path / "a", windows=wins).run()
    b = Simulation(small(seed=3), work=tmp_path / "b", windows=wins).run()
    c = Simulation(small(seed=4), work=tmp_path / "c", windows=wins).run()
    assert len(a.rounds) >= 2
    assert [asdict(r) for r in a.rounds] == [asdict(r) for r in b.rounds]
    assert [r.accuracy for r in a.rounds] != [r.accuracy for r in c.rounds]


def test_training_improves_the_global_model_and_codec_cuts_bytes(tmp_path: Path) -> None:
    wins = load_windows(small(orbits=12.0))
    f32 = Simulation(small(orbits=12.0, epochs=3), work=tmp_path / "f", windows=wins).run()
    top = Simulation(
        small(orbits=12.0, epochs=3, codec="topk:0.05+ef | quant:8 | zstd"), work=tmp_path / "t", windows=wins
    ).run()
    assert f32.rounds[-1].accuracy is not None and f32.rounds[0].accuracy is not None
    assert f32.rounds[-1].accuracy > f32.rounds[0].accuracy + 0.1
    assert f32.ratio_vs_float32 is not None and 0.9 < f32.ratio_vs_float32 <= 1.0
    assert top.ratio_vs_float32 is not None and top.ratio_vs_float32 > 8


def test_unknown_strategy_names_the_available_ones(tmp_path: Path) -> None:
    from orbitfl.ground.strategies import STRATEGIES

    with pytest.raises(ValueError, match="not available") as e:
        Simulation(small(strategy="no-such-strategy"), work=tmp_path)
    assert all(n in str(e.value) for n in STRATEGIES)


def test_bad_configs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown key"):
        SimConfig.from_dict({"satts": 3})
    with pytest.raises(ValueError, match="partition"):
        SimConfig(partition="random")
    monkeypatch.setenv("ORBITFL_DATA_DIR", str(tmp_path / "empty"))  # no MNIST cache here
    with pytest.raises(ValueError, match=r"mnist_path.*orbitfl data mnist"):
        SimConfig(dataset="mnist")
    with pytest.raises(ValueError, match="orbits"):
        SimConfig(orbits=0)
    with pytest.raises(ValueError, match="codec"):
        Simulation(small(codec="no-such-stage:3"))
    with pytest.raises(ValueError, match="alq"):
        Simulation(small(codec="alq:3/99"))


def test_frame_type_of_garbage() -> None:
    assert frame_type(b"\xc1\xff") == "?"


def test_update_budget_is_the_next_windows_capacity_share(tmp_path: Path) -> None:
    ws = [Window("sat-00", "gs", 100.0, 400.0, 9600.0), Window("sat-00", "gs", 5000.0, 5100.0, 2400.0)]
    csv = write_csv(ws, tmp_path / "w.csv")
    sim = Simulation(small(sats=1, windows_csv=str(csv), budget_fraction=0.5, link_share=0.5), work=tmp_path)
    try:
        assert sim.update_budget("sat-00") == int(300 * 9600 * 0.5 / 8 * 0.5)
        sim.now = 1000.0
        assert sim.update_budget("sat-00") == int(100 * 2400 * 0.5 / 8 * 0.5)
    finally:
        sim.close()


def test_emsfl_assigns_disjoint_experts_and_satellites_upload_only_theirs(tmp_path: Path) -> None:
    from orbitfl.ground.strategies import STRATEGIES
    from orbitfl.wire import Update, decode

    if "emsfl" not in STRATEGIES:
        pytest.skip("emsfl is not in this build")
    cfg = small(
        sats=3,
        planes=3,
        model="moe",
        strategy="emsfl",
        min_updates=2,
        max_staleness=4,
        partition="dirichlet",
        rounds=3,
        orbits=20.0,
    )
    sim = Simulation(cfg, work=tmp_path / "run")
    table = sim.ground.cfg.hints["experts"]
    owned = [e for es in table.values() for e in es]
    assert len(owned) == len(set(owned)) and set(owned) <= {0, 1, 2, 3} and all(table.values())
    uploads: list[tuple[str, set[str]]] = []
    real = sim._transmit

    def spy(sat: str, frame: bytes, *, up: bool) -> None:
        if up:
            msg = decode(frame)
            if isinstance(msg, Update):
                full = as_full(msg.payload, sim.ground.layout, sim.ground.recipes)
                uploads.append((sat, set(full["tensors"])))
        real(sat, frame, up=up)

    sim._transmit = spy  # type: ignore[method-assign]
    res = sim.run()
    assert len(res.rounds) == 3 and uploads
    for sat, names in uploads:
        experts = {n.split(".")[1] for n in names if n.startswith("expert.")}
        assert experts == {str(e) for e in table[sat]}, (sat, names)
        assert {"router.weight", "router.bias"} <= names


def test_spacedml_partial_updates_fit_the_next_windows_budget(tmp_path: Path) -> None:
    from orbitfl.ground.strategies import STRATEGIES
    from orbitfl.wire import Update, decode
    from orbitfl.wire.payload import decode_payload

    if "partial" not in STRATEGIES:
        pytest.skip("partial is not in this build")
    cfg = small(
        strategy="partial",
        strategy_options={"zero_is_unsent": True, "block": 256},
        hints={"partial": {"block": 256}},
        codec="fp16",
        link_share=0.05,
        budget_fraction=0.02,
        rounds=2,
        orbits=20.0,
    )
    sim = Simulation(cfg, work=tmp_path / "run")
    sent: list[tuple[int, float]] = []
    real = sim._transmit

    def spy(sat: str, frame: bytes, *, up: bool) -> None:
        if up:
            msg = decode(frame)
            if isinstance(msg, Update):
                vals = decode_payload(msg.payload, layout=sim.ground.layout, recipes=sim.ground.recipes)
                nonzero = sum(int((v != 0).sum()) for v in vals.values())
                sent.append((len(frame), nonzero / sim.n_params))
        real(sat, frame, up=up)

    sim._transmit = spy  # type: ignore[method-assign]
    budget = sim.update_budget("sat-00")
    res = sim.run()
    assert len(res.rounds) == 2 and sent
    assert all(0 < frac < 0.5 for _, frac in sent), sent  # only the chosen blocks carry values
    assert all(n <= budget * 1.5 + 600 for n, _ in sent), (budget, sent)
    assert budget < res.n_params * 2  # the budget binds: the whole model as fp16 would not fit


def test_spacedml_alq_run_completes_with_every_update_within_its_window_budget(tmp_path: Path) -> None:
    from orbitfl.codec import Payload
    from orbitfl.ground.strategies import STRATEGIES
    from orbitfl.runtime.events import TrainingDone
    from orbitfl.wire import Update, decode

    if "partial" not in STRATEGIES:
        pytest.skip("partial is not in this build")
    cfg = small(
        codec="alq",
        strategy="partial",
        strategy_options={"zero_is_unsent": True, "block": 256},
        hints={"partial": {"block": 256}},
        link_share=0.05,
        budget_fraction=0.1,
        rounds=3,
        orbits=20.0,
    )
    sim = Simulation(cfg, work=tmp_path / "run")
    budgets: dict[str, int] = {}
    sizes: dict[str, int] = {}
    agent, transmit = sim._agent, sim._transmit

    def see_done(sat: str, event: object) -> None:
        if isinstance(event, TrainingDone):
            assert event.budget_bytes is not None and event.curvature is not None
            budgets[event.task_id] = event.budget_bytes
        agent(sat, event)

    def see_frame(sat: str, frame: bytes, *, up: bool) -> None:
        msg = decode(frame)
        if up and isinstance(msg, Update):
            full = as_full(msg.payload, sim.ground.layout, sim.ground.recipes)
            sizes[msg.task_id] = Payload.from_wire(full["body"]).nbytes
        transmit(sat, frame, up=up)

    sim._agent = see_done  # type: ignore[method-assign]
    sim._transmit = see_frame  # type: ignore[method-assign]
    res = sim.run()
    assert len(res.rounds) == 3 and not res.refused
    assert sizes and set(sizes) <= set(budgets)
    assert all(sizes[t] <= budgets[t] for t in sizes), (sizes, budgets)
    assert min(budgets.values()) < 4 * res.n_params  # the budget binds: float32 would not fit
    assert res.uplink_update_bytes < res.float32_bytes


@pytest.mark.parametrize("strategy", ["fedprox", "krum", "fedadam", "dp"])
def test_the_simulator_runs_the_daemons_strategies_from_the_one_catalog(strategy: str) -> None:
    """The strategies a Flower user expects run in the simulator as in the daemons: same catalog,
    same hints (FedProx's μ reaches the agents' trainers through agent/strategy_side.py)."""
    res = Simulation(small(strategy=strategy, rounds=2)).run()
    assert [r.round for r in res.rounds] == [1, 2]
    assert all(r.accuracy is not None and 0.0 <= r.accuracy <= 1.0 for r in res.rounds)
    assert res.refused == {}


def test_scaffold_moves_in_the_simulator_with_its_control_bytes_counted() -> None:
    """SCAFFOLD through the real machines: c goes down in every TASK, Δcᵢ up in every UPDATE (so
    an update is about twice FedAvg's at fp32), and the global model still learns."""
    kw = dict(sats=3, rounds=4, partition="dirichlet", alpha=0.3, epochs=1)
    fed = Simulation(small(**kw)).run()
    sc = Simulation(small(strategy="scaffold", **kw)).run()
    assert sc.refused == {} and [r.round for r in sc.rounds] == [1, 2, 3, 4]
    per_update = sc.uplink_update_bytes / sc.accepted_updates
    assert 1.9 < per_update / (fed.uplink_update_bytes / fed.accepted_updates) < 2.1
    assert sc.downlink_bytes > fed.downlink_bytes + sc.accepted_updates * 4 * sc.n_params
    accs = [r.accuracy for r in sc.rounds]
    assert accs[-1] is not None and accs[0] is not None and accs[-1] > max(0.3, accs[0])
