"""The strategies behind the real ground machine and its SQLite/file store: partial uploads over
the wire, FedBuff closing after K with staleness, crash recovery of every strategy's state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.agent.partial import choose_blocks
from orbitfl.ground.admission import Guards
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import make_strategy
from orbitfl.runtime.events import MessageReceived, RoundClosed, Send
from orbitfl.wire import Ack, Hello, Nack, Update, decode, encode
from orbitfl.wire.payload import encode_payload

MODEL = {"w": np.zeros((8, 4), np.float32), "b": np.zeros(4, np.float32)}


def _ground(
    root: Path, strategy: str, opts: dict[str, Any], model: dict[str, np.ndarray] = MODEL, **cfg: Any
) -> GroundMachine:
    return GroundMachine(GroundStore(root), GroundConfig(**cfg), model, make_strategy(strategy, **opts))


def _rx(m: GroundMachine, peer: str, frame: bytes) -> list[Any]:
    return m.handle(MessageReceived(peer, frame), 0.0)


def _hello(agent: str, n: int = 1, version: int | None = None) -> bytes:
    return encode(Hello(f"{agent}:h{n}", agent, "test", version, {}))


def _update(agent: str, n: int, tensors: dict[str, np.ndarray], samples: int, base: int, rnd: int) -> bytes:
    p = encode_payload("fp32", tensors)
    return encode(Update(f"{agent}:{n}", f"r{rnd}/{agent}", rnd, base, samples, {}, p))


def _msgs(acts: list[Any]) -> list[Any]:
    return [decode(a.frame) for a in acts if isinstance(a, Send)]


def test_partial_blocks_over_the_wire_average_over_their_senders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    m = _ground(tmp_path, "partial", {"block": 8, "zero_is_unsent": True}, min_updates=3)
    direct = make_strategy("partial", block=8)
    direct.reset(MODEL)
    for i in range(3):
        a = f"a{i}"
        _rx(m, a, _hello(a))
        delta = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in MODEL.items()}
        sel = choose_blocks(delta, budget_bytes=4 * 16, bytes_per_value=4, block=8)
        acts = _rx(m, a, _update(a, 1, sel.tensors(delta), 10 * (i + 1), 0, 1))
        assert [x for x in _msgs(acts) if isinstance(x, Ack)], _msgs(acts)
        direct.accumulate({k: delta[k] for k in sel.masks}, 10 * (i + 1), masks=sel.masks)
    assert m.version == 1
    want = direct.finalize(MODEL)
    for k in MODEL:
        np.testing.assert_allclose(m.global_model[k], want[k], rtol=1e-6, atol=1e-7)
    changed = sum(int(np.count_nonzero(m.global_model[k])) for k in MODEL)
    assert 0 < changed <= 3 * 16  # each agent sent two blocks of 8


def test_fedbuff_closes_after_k_and_weights_a_stale_update(tmp_path: Path) -> None:
    k = 3
    m = _ground(tmp_path, "fedbuff", {"buffer_size": k, "max_staleness": 2}, min_updates=k, max_staleness=2)
    ones = {n: np.ones(v.shape, np.float32) for n, v in MODEL.items()}
    for a in ("a0", "a1", "a2", "late"):
        _rx(m, a, _hello(a))
    for a in ("a0", "a1"):
        _rx(m, a, _update(a, 1, ones, 10, 0, 1))
    assert m.version == 0 and m.strategy.updates == 2
    acts = _rx(m, "a2", _update("a2", 1, ones, 10, 0, 1))
    (rc,) = [x for x in acts if isinstance(x, RoundClosed)]
    assert (rc.updates, m.version) == (k, 1)
    np.testing.assert_allclose(m.global_model["w"], 1.0)
    # round 2: "late" still sends its update built on v0 (staleness 1), two fresh ones on v1
    _rx(m, "late", _update("late", 1, ones, 10, 0, 1))
    for a in ("a0", "a1"):
        _rx(m, a, _update(a, 2, ones, 10, 1, 2))
    assert m.version == 2
    want = 1.0 + (10 / math.sqrt(2) + 10 + 10) / 30
    np.testing.assert_allclose(m.global_model["w"], want, rtol=1e-6)


@pytest.mark.parametrize(
    ("name", "opts"),
    [
        ("partial", {"block": 4}),
        ("fedbuff", {"buffer_size": 100}),
        ("clip", {"max_norm": 2.0}),
        ("median", {}),
        ("trimmed", {"beta": 0.2}),
    ],
)
def test_recovery_from_checkpoint_plus_log_equals_uninterrupted(
    tmp_path: Path, name: str, opts: dict[str, Any]
) -> None:
    m = _ground(tmp_path, name, opts, checkpoint_every=2, min_updates=100)
    rng = np.random.default_rng(1)
    for i in range(5):
        a = f"a{i}"
        _rx(m, a, _hello(a))
        t = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in MODEL.items()}
        if i == 3:
            t.pop("b")
        acts = _rx(m, a, _update(a, 1, t, i + 1, 0, 1))
        assert not [x for x in _msgs(acts) if isinstance(x, Nack)], _msgs(acts)
    assert (tmp_path / "ckpt" / "round-000001.msgpack").exists()
    ref = m.strategy.finalize(m.global_model)
    m.store.close()
    m2 = _ground(tmp_path, name, opts, checkpoint_every=2, min_updates=100)
    assert m2.strategy.updates == 5
    got = m2.strategy.finalize(m2.global_model)
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k])


def test_emsfl_through_the_machine_changes_only_assigned_experts_and_recovers(tmp_path: Path) -> None:
    from orbitfl.ground.strategies.assignment import assign_experts

    rng = np.random.default_rng(2)
    moe = {"router.weight": np.zeros((3, 4), np.float32)}
    moe.update({f"expert.{e}.fc.weight": np.zeros((4, 2), np.float32) for e in range(3)})
    experts = assign_experts(np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]), 1)
    assert experts == [[0], [1]]  # expert 2 goes to nobody
    cluster = {"a0": 0, "a1": 0, "a2": 1}
    cfg = {"checkpoint_every": 2, "min_updates": 3, "max_staleness": 8}
    m = _ground(tmp_path, "emsfl", {}, moe, **cfg)
    for i, (a, c) in enumerate(cluster.items()):
        _rx(m, a, _hello(a))
        names = ["router.weight", *(f"expert.{e}.fc.weight" for e in experts[c])]
        t = {k: rng.standard_normal(moe[k].shape).astype(np.float32) for k in names}
        if i == 2:  # the ground "dies" before the round closes; the last update goes to a new one
            m.store.close()
            m = _ground(tmp_path, "emsfl", {}, moe, **cfg)
            assert m.strategy.updates == 2
        _rx(m, a, _update(a, 1, t, 10, 0, 1))
    assert m.version == 1
    new = m.global_model
    np.testing.assert_array_equal(new["expert.2.fc.weight"], moe["expert.2.fc.weight"])
    for k in ("router.weight", "expert.0.fc.weight", "expert.1.fc.weight"):
        assert np.any(new[k] != moe[k]), k


@pytest.mark.parametrize(("name", "opts"), [("fedavg", {}), ("median", {}), ("trimmed", {"beta": 0.2})])
def test_byzantine_agent_through_the_machine(tmp_path: Path, name: str, opts: dict[str, Any]) -> None:
    rng = np.random.default_rng(3)
    mu = {k: (0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in MODEL.items()}
    # The admission norm bound would refuse the attacker before any strategy sees it (tested in
    # test_admission.py); off here, so this measures what each strategy does with it.
    m = _ground(tmp_path, name, opts, min_updates=6, guards=Guards(norm_model_ratio=0, norm_median_ratio=0))
    honest = []
    for i in range(6):
        a = f"a{i}"
        _rx(m, a, _hello(a))
        t = {k: (v + 0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in mu.items()}
        if i == 2:
            t = {k: -100.0 * v for k, v in t.items()}  # the attacker: sign-flipped, scaled ×100
        else:
            honest.append(t)
        _rx(m, a, _update(a, 1, t, 10, 0, 1))
    assert m.version == 1
    err = np.sqrt(
        sum(float(((m.global_model[k] - np.mean([h[k] for h in honest], 0)) ** 2).sum()) for k in MODEL)
    )
    ref = np.sqrt(sum(float((mu[k] ** 2).sum()) for k in MODEL))
    if name == "fedavg":
        assert err > 5 * ref
    else:
        assert err < 0.25 * ref, (name, err, ref)
