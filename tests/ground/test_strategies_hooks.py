"""The two machine hooks strategies use: ``refusal`` (checked before an update is stored, so a
refused update is NACKed and never logged) and ``ready`` (the strategy closes the round)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import FedAvg, make_strategy
from orbitfl.runtime.events import MessageReceived, RoundClosed, Send
from orbitfl.wire import Ack, Hello, Nack, Task, Update, decode, encode
from orbitfl.wire.errors import Reason
from orbitfl.wire.payload import encode_payload

MODEL = {"w": np.zeros((3, 2), np.float32)}


def _ground(root: Path, name: str, opts: dict[str, Any], **cfg: Any) -> GroundMachine:
    return GroundMachine(GroundStore(root), GroundConfig(**cfg), MODEL, make_strategy(name, **opts))


def _rx(m: GroundMachine, peer: str, frame: bytes) -> list[Any]:
    return m.handle(MessageReceived(peer, frame), 0.0)


def _hello(agent: str) -> bytes:
    return encode(Hello(f"{agent}:h1", agent, "test", None, {}))


def _update(agent: str, n: int, base: int, rnd: int, value: float = 1.0) -> bytes:
    p = encode_payload("fp32", {"w": np.full((3, 2), value, np.float32)})
    return encode(Update(f"{agent}:{n}", f"r{rnd}/{agent}", rnd, base, 10, {}, p))


def _task(acts: list[Any]) -> Task:
    (task,) = [x for x in _msgs(acts) if isinstance(x, Task)]
    return task


def _answer(task: Task, n: int, value: float = 1.0) -> bytes:
    """An update answering ``task`` (its id, round and base), as a real agent sends it."""
    agent = task.task_id.rsplit("/", 1)[-1]
    p = encode_payload(task.recipe, {"w": np.full((3, 2), value, np.float32)})
    return encode(Update(f"{agent}:{n}", task.task_id, task.round, task.model_version, 10, {}, p))


def _msgs(acts: list[Any]) -> list[Any]:
    return [decode(a.frame) for a in acts if isinstance(a, Send)]


def test_strategy_refusal_is_a_stale_nack_and_nothing_is_stored(tmp_path: Path) -> None:
    m = _ground(tmp_path, "fedbuff", {"buffer_size": 1, "max_staleness": 1}, min_updates=1, max_staleness=5)
    tasks = {a: _task(_rx(m, a, _hello(a))) for a in ("a0", "a1", "a2")}  # all of round 1, on v0
    _rx(m, "a0", _answer(tasks["a0"], 1))  # v1
    _rx(m, "a1", _answer(tasks["a1"], 1))  # staleness 1: accepted -> v2
    assert m.version == 2
    acts = _rx(m, "a2", _answer(tasks["a2"], 1))  # staleness 2: the machine allows 5, FedBuff 1
    (nack,) = [x for x in _msgs(acts) if isinstance(x, Nack)]
    assert nack.reason == Reason.STALE.value and nack.ref == "a2:1"
    assert "2 versions stale" in nack.text and "at most 1" in nack.text
    assert not m.store.is_seen("a2:1") and m.strategy.updates == 0 and m.version == 2
    # a restart replays nothing refused, and a fresh update from a2 is welcome
    m.store.close()
    m = _ground(tmp_path, "fedbuff", {"buffer_size": 1, "max_staleness": 1}, min_updates=1, max_staleness=5)
    task = _task(_rx(m, "a2", _hello("a2")))
    assert (task.round, task.model_version) == (3, 2)
    acts = _rx(m, "a2", _answer(task, 2))
    assert [x for x in _msgs(acts) if isinstance(x, Ack)] and m.version == 3


def test_a_ready_strategy_closes_the_round_before_min_updates(tmp_path: Path) -> None:
    for name, opts, k in (("fedbuff", {"buffer_size": 2}, 2), ("median", {"max_updates": 3}, 3)):
        m = _ground(tmp_path / name, name, opts, min_updates=10)
        for i in range(k):
            a = f"a{i}"
            _rx(m, a, _hello(a))
            acts = _rx(m, a, _update(a, 1, 0, 1, value=float(i)))
            closed = [x for x in acts if isinstance(x, RoundClosed)]
            assert bool(closed) == (i == k - 1), (name, i)
        assert m.version == 1 and m.strategy.updates == 0


def test_fedavg_neither_refuses_nor_closes_early() -> None:
    f = FedAvg()
    f.reset(MODEL)
    assert f.refusal(100) is None and not f.ready
