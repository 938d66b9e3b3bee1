"""The ground and the agent agree on the model (fingerprint in HELLO and TASK) and on how many
rounds a federation has, on a real store and outbox; the machines are driven frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitfl.agent.machine import AgentConfig, AgentMachine
from orbitfl.agent.outbox import Outbox
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.models import zoo
from orbitfl.runtime.events import (
    GROUND,
    Action,
    Gauge,
    LinkUp,
    Log,
    MessageReceived,
    Send,
    StartTraining,
    Tick,
)
from orbitfl.wire import Hello, Nack, Reason, Task, WireError, decode, encode

from .conftest import MODEL, hello, update_frame

FP_A, FP_B = "0123456789abcdef", "fedcba9876543210"


def _sent(actions: list[Action]) -> list[object]:
    return [decode(a.frame) for a in actions if isinstance(a, Send)]


def test_fingerprint_depends_on_structure_not_weights() -> None:
    a, b = zoo.build("mlp", seed=0), zoo.build("mlp", seed=1)
    assert zoo.fingerprint(a) == zoo.fingerprint(b)  # other weights, same model
    assert zoo.fingerprint(a) != zoo.fingerprint(zoo.build("mlp", hidden=(64,)))
    assert zoo.fingerprint(a) != zoo.fingerprint(zoo.build("lenet-s"))


def test_fingerprint_fields_round_trip_and_are_validated() -> None:
    h = decode(encode(Hello("a:1", "a", "t", None, {}, FP_A)))
    assert isinstance(h, Hello) and h.model_fingerprint == FP_A
    t = decode(encode(Task("g:1", "r1/a", 1, 0, "fp32", {}, None, None, FP_B)))
    assert isinstance(t, Task) and t.model_fingerprint == FP_B
    assert decode(encode(Hello("a:1", "a", "t", None, {}))).model_fingerprint is None  # type: ignore[attr-defined]
    for bad in ("XYZ", "ab", "0" * 65):
        with pytest.raises(WireError, match="model_fingerprint"):
            decode(encode(Hello("a:1", "a", "t", None, {}, bad)))


def test_mismatched_agent_is_refused_and_goes_quiet_keeping_its_outbox(tmp_path: Path) -> None:
    g = GroundMachine(GroundStore(tmp_path / "g"), GroundConfig(model_fingerprint=FP_A), MODEL)
    out = g.handle(MessageReceived("a1", encode(Hello("a1:h1", "a1", "t", None, {}, FP_B))), 0.0)
    [nack] = [m for m in _sent(out) if isinstance(m, Nack)]
    assert nack.reason == Reason.MODEL_MISMATCH.value and FP_A in nack.text and FP_B in nack.text
    assert not any(isinstance(m, Task) for m in _sent(out))
    assert any(isinstance(a, Log) and "model_mismatch" in a.text for a in out)

    agent = AgentMachine(Outbox(tmp_path / "a1.db"), AgentConfig("a1", model_fingerprint=FP_B))
    agent.handle(LinkUp(), 0.0)
    acts = agent.handle(MessageReceived(GROUND, encode(nack)), 0.0)
    assert any(isinstance(a, Log) and a.level == "ERROR" and "model mismatch" in a.text for a in acts)
    # quiet: no HELLO or heartbeat until the backoff is over, then it asks again
    assert _sent(agent.handle(Tick(), 30.0)) == []
    again = _sent(agent.handle(Tick(), 61.0))
    assert [type(m) for m in again] == [Hello]


def test_agent_refuses_a_task_for_another_model_without_installing_it(tmp_path: Path) -> None:
    g = GroundMachine(GroundStore(tmp_path / "g"), GroundConfig(model_fingerprint=FP_A), MODEL)
    [task] = [m for m in _sent(g.handle(MessageReceived("a1", hello("a1")), 0.0)) if isinstance(m, Task)]
    assert task.model_fingerprint == FP_A  # an agent that did not say its fingerprint is told
    agent = AgentMachine(Outbox(tmp_path / "a1.db"), AgentConfig("a1", model_fingerprint=FP_B))
    agent.handle(LinkUp(), 0.0)
    acts = agent.handle(MessageReceived(GROUND, encode(task)), 0.0)
    assert not any(isinstance(a, StartTraining) for a in acts)
    assert agent.version is None
    [nack] = [m for m in _sent(acts) if isinstance(m, Nack)]
    assert nack.reason == Reason.MODEL_MISMATCH.value
    back = g.handle(MessageReceived("a1", encode(nack)), 1.0)
    assert any(isinstance(a, Log) and "model_mismatch" in a.text for a in back)
    assert not any(isinstance(m, Task) for m in _sent(back))  # no resend loop


def _finish(g: GroundMachine, rounds: int, t0: float = 0.0) -> list[Action]:
    out: list[Action] = []
    for r in range(1, rounds + 1):
        n = int(t0) + r  # update ids never repeat, or the ground would count them once
        for agent in ("a", "b"):
            out += g.handle(MessageReceived(agent, hello(agent, n, g.version)), t0 + r)
            out += g.handle(
                MessageReceived(agent, update_frame(agent, n, base=g.version, rnd=g.round)), t0 + r
            )
    return out


def test_more_rounds_continue_a_finished_federation(tmp_path: Path) -> None:
    store = GroundStore(tmp_path / "g")
    g = GroundMachine(store, GroundConfig(rounds=2), MODEL)
    out = _finish(g, 2)
    assert g.done and g.version == 2
    finished = [a for a in out if isinstance(a, Log) and "federation finished" in a.text]
    assert len(finished) == 1
    assert Gauge("federation_finished", 1) in out
    store.close()

    same = GroundMachine(GroundStore(tmp_path / "g"), GroundConfig(rounds=2), MODEL)
    assert same.done and same.continued_from is None
    same.store.close()

    more = GroundMachine(GroundStore(tmp_path / "g"), GroundConfig(rounds=4), MODEL)
    assert not more.done and more.continued_from == 2 and more.round == 3 and more.version == 2
    _finish(more, 2, t0=10.0)
    assert more.done and more.version == 4 and more.store.rounds_closed() == 4
    np.testing.assert_array_equal(more.global_model["w"], np.full((8, 4), 4.0, np.float32))
    more.store.close()
