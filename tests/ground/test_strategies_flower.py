"""The strategies a Flower user expects, behind the real ground machine and store: Krum, the
server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad), FedProx's hint, central DP with its
accountant; their state survives a crash mid-round and across rounds; options are refused by name."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.ground.daemon import build_strategy
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import make_strategy
from orbitfl.ground.strategies.dp import epsilon
from orbitfl.runtime.config import ConfigError, load_ground
from orbitfl.runtime.events import MessageReceived, Send
from orbitfl.wire import Hello, Nack, Task, Update, decode, encode
from orbitfl.wire.payload import encode_payload

MODEL = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}
CARRYING = [
    ("fedavgm", {}),
    ("fedadam", {}),
    ("fedyogi", {"tau": 0.01}),
    ("fedadagrad", {}),
    ("dp", {"clip_norm": 2.0, "noise_multiplier": 0.5}),
    ("krum", {"f": 1, "multi": 2}),
    ("fedprox", {"mu": 0.1}),
]


def _ground(root: Path, name: str, opts: dict[str, Any], **cfg: Any) -> GroundMachine:
    return GroundMachine(GroundStore(root), GroundConfig(**cfg), MODEL, make_strategy(name, **opts))


def _rx(m: GroundMachine, peer: str, frame: bytes) -> list[Any]:
    return m.handle(MessageReceived(peer, frame), 0.0)


def _hello(agent: str, caps: dict[str, Any] | None = None) -> bytes:
    return encode(Hello(f"{agent}:h1", agent, "test", None, caps or {}))


def _update(agent: str, n: int, tensors: dict[str, np.ndarray], samples: int, base: int, rnd: int) -> bytes:
    return encode(
        Update(f"{agent}:{n}", f"r{rnd}/{agent}", rnd, base, samples, {}, encode_payload("fp32", tensors))
    )


def _deltas(seed: int, n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {k: (0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in MODEL.items()}
        for _ in range(n)
    ]


def _feed(m: GroundMachine, rnd: int, deltas: list[dict[str, np.ndarray]], start: int = 0) -> None:
    for i, d in enumerate(deltas, start):
        a = f"a{i}"
        acts = _rx(m, a, _update(a, rnd, d, 5 + i, rnd - 1, rnd))
        assert not [x for x in acts if isinstance(x, Send) and isinstance(decode(x.frame), Nack)]


@pytest.mark.parametrize(("name", "opts"), CARRYING)
def test_a_crash_mid_round_and_across_rounds_ends_in_the_same_model(
    tmp_path: Path, name: str, opts: dict[str, Any]
) -> None:
    rounds = [_deltas(r, 3) for r in range(3)]
    cfg = {"min_updates": 3, "checkpoint_every": 2}

    ref = _ground(tmp_path / "ref", name, opts, **cfg)
    for a in ("a0", "a1", "a2"):
        _rx(ref, a, _hello(a))
    for r, ds in enumerate(rounds, 1):
        _feed(ref, r, ds)
    assert ref.version == 3

    m = _ground(tmp_path / "crash", name, opts, **cfg)
    for a in ("a0", "a1", "a2"):
        _rx(m, a, _hello(a))
    _feed(m, 1, rounds[0])
    m.store.close()  # dies between rounds: the server moments / DP round count must survive
    m = _ground(tmp_path / "crash", name, opts, **cfg)
    _feed(m, 2, rounds[1])
    _feed(m, 3, rounds[2][:2])
    m.store.close()  # dies mid-round, after a checkpoint (checkpoint_every=2)
    m = _ground(tmp_path / "crash", name, opts, **cfg)
    assert m.strategy.updates == 2
    _feed(m, 3, rounds[2][2:], start=2)
    assert m.version == 3
    for k in MODEL:
        np.testing.assert_array_equal(m.global_model[k], ref.global_model[k], err_msg=f"{name} {k}")
    assert any(np.any(ref.global_model[k] != MODEL[k]) for k in MODEL)


def test_fedadam_takes_reddis_step() -> None:
    s = make_strategy("fedadam", server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    g = {"w": np.zeros(4, np.float32)}
    deltas = [np.array([1.0, -2.0, 0.5, 0.0], np.float32), np.array([3.0, 0.0, 0.5, 0.0], np.float32)]
    s.reset(g)
    s.accumulate({"w": deltas[0]}, 1)
    s.accumulate({"w": deltas[1]}, 3)
    got = s.finalize(g)["w"]
    d = (deltas[0] + 3 * deltas[1]) / 4
    m = 0.1 * d
    v = 0.99 * 1e-6 + 0.01 * d * d
    np.testing.assert_allclose(got, 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    # the moments carry into the next round: the same Δ again moves further than the first time
    s.reset({"w": got})
    s.accumulate({"w": d}, 1)
    second = s.finalize({"w": got})["w"] - got
    assert np.all(np.abs(second[:3]) > np.abs(got[:3]))


def test_krum_never_picks_the_byzantine_update_and_multi_krum_averages_the_rest(tmp_path: Path) -> None:
    honest = _deltas(4, 4)
    evil = {k: -100.0 * v for k, v in honest[0].items()}
    for multi, want in ((1, None), (4, honest)):
        s = make_strategy("krum", f=1, multi=multi)
        s.reset(MODEL)
        for d in [*honest[:2], evil, *honest[2:]]:
            s.accumulate(d, 10)
        out = s.finalize(MODEL)
        assert 2 not in s.selected  # type: ignore[attr-defined]
        if want is not None:
            for k in MODEL:
                np.testing.assert_allclose(out[k], np.mean([h[k] for h in want], 0), rtol=1e-5, atol=1e-7)


def test_central_dp_clips_adds_replayable_noise_and_counts_epsilon() -> None:
    big = {k: 50.0 * v for k, v in _deltas(5, 1)[0].items()}

    def one_round(seed: int) -> dict[str, np.ndarray]:
        s = make_strategy("dp", clip_norm=1.0, noise_multiplier=0.01, seed=seed)
        s.reset(MODEL)
        s.accumulate(big, 10)
        return s.finalize(MODEL)

    a, b, c = one_round(0), one_round(0), one_round(1)
    norm = math.sqrt(sum(float((a[k] ** 2).sum()) for k in a))
    assert 0.9 < norm < 1.1  # clipped to C = 1, noise σC = 0.01 per coordinate
    assert all(np.array_equal(a[k], b[k]) for k in a) and not all(np.array_equal(a[k], c[k]) for k in a)
    eps = [epsilon(1.0, r, 1e-5) for r in (1, 10, 100)]
    assert 0 < eps[0] < eps[1] < eps[2]
    assert epsilon(4.0, 10, 1e-5) < eps[1]
    s = make_strategy("dp")
    assert s.report()["dp_epsilon"] == 0.0


def test_strategy_hints_reach_agents_in_their_task(tmp_path: Path) -> None:
    m = _ground(tmp_path / "p", "fedprox", {"mu": 0.25})
    (task,) = [decode(a.frame) for a in _rx(m, "a0", _hello("a0")) if isinstance(a, Send)]
    assert isinstance(task, Task) and task.hints["proximal_mu"] == 0.25

    moe = {"router.weight": np.zeros((3, 4), np.float32)}
    moe.update({f"expert.{e}.fc.weight": np.zeros((4, 2), np.float32) for e in range(3)})
    g = GroundMachine(GroundStore(tmp_path / "e"), GroundConfig(), moe, make_strategy("emsfl"))
    _rx(g, "a0", _hello("a0", {"affinity": [0.1, 0.2, 0.7]}))
    acts = _rx(g, "a1", _hello("a1", {"affinity": [0.6, 0.3, 0.1]}))
    (task,) = [decode(a.frame) for a in acts if isinstance(a, Send)]
    assert isinstance(task, Task)
    experts = task.hints["experts"]
    assert 2 in experts["a0"] and 0 in experts["a1"] and not set(experts["a0"]) & set(experts["a1"])


def _toml(tmp_path: Path, strategy: str, options: str) -> Path:
    p = tmp_path / "ground.toml"
    p.write_text(
        f'[ground]\nbind = "tcp://127.0.0.1:1"\nstate_dir = "s"\ninsecure = true\n\n'
        f'[federation]\nstrategy = "{strategy}"\nmin_updates = 2\n\n[strategy]\n{options}\n'
    )
    return p


@pytest.mark.parametrize(
    ("strategy", "options", "message"),
    [
        ("fedadam", "beta1 = 1.5", "[strategy] beta1 must be in [0, 1), got 1.5"),
        ("fedadam", "betaone = 0.5", "[strategy] betaone: not an option of strategy 'fedadam'"),
        ("krum", 'f = "two"', "[strategy] f must be an integer, got 'two'"),
        ("median", "max_updates = 1", "[strategy] max_updates: median holds at most 1 updates"),
        ("fedmagic", "", "federation.strategy: unknown strategy 'fedmagic'"),
    ],
)
def test_a_bad_strategy_setting_is_refused_naming_the_key(
    tmp_path: Path, strategy: str, options: str, message: str
) -> None:
    path = _toml(tmp_path, strategy, options)
    with pytest.raises(ConfigError) as err:
        build_strategy(load_ground(path))
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_every_catalog_strategy_builds_from_a_toml_with_its_defaults(tmp_path: Path) -> None:
    from orbitfl.ground.strategies import STRATEGIES

    for name in STRATEGIES:
        assert build_strategy(load_ground(_toml(tmp_path, name, ""))).name == name


@pytest.mark.parametrize(("name", "left_to_finish"), [("fedbuff", True), ("fedavg", False)])
def test_an_asynchronous_strategy_lets_a_slow_agent_finish_its_task(
    tmp_path: Path, name: str, left_to_finish: bool
) -> None:
    """At a round close FedBuff does not hand a still-training agent the next task (which would
    make it drop its work); its update then arrives stale and counts. FedAvg (synchronous) does."""
    opts = {"buffer_size": 2} if name == "fedbuff" else {}
    m = _ground(tmp_path, name, opts, min_updates=2, max_staleness=4)
    for a in ("a0", "a1", "slow"):
        _rx(m, a, _hello(a))
    d = _deltas(7, 3)
    _rx(m, "a0", _update("a0", 1, d[0], 5, 0, 1))
    acts = _rx(m, "a1", _update("a1", 1, d[1], 5, 0, 1))
    assert m.version == 1
    tasks = {
        decode(a.frame).task_id for a in acts if isinstance(a, Send) and isinstance(decode(a.frame), Task)
    }
    assert ("r2/slow" in tasks) is not left_to_finish
    assert {"r2/a0", "r2/a1"} <= tasks
    acts = _rx(m, "slow", _update("slow", 1, d[2], 5, 0, 1))  # built on v0, staleness 1
    assert not [a for a in acts if isinstance(a, Send) and isinstance(decode(a.frame), Nack)]
    assert m.strategy.updates == 1
