"""A real ground daemon fed every kind of bad input over a real Curve link: each is refused with its
reason (or never reaches the application), counted, and the daemon then accepts a good update."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np
import pytest

from orbitfl.runtime.link import AgentLink, CurveClientKeys, Received
from orbitfl.wire import Ack, Hello, Message, Nack, Task, Update, decode, encode
from orbitfl.wire.model_codec import decode_model
from orbitfl.wire.tensors import tensors_to_wire

pytestmark = pytest.mark.integration

MAX_MSG = 1 << 20


def recv(link: AgentLink, want: type[Message], timeout_s: float = 15.0) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for ev in link.poll(0.05):
            if isinstance(ev, Received):
                msg = decode(ev.frame)
                if isinstance(msg, want):
                    return msg
    pytest.fail(f"no {want.__name__} from the ground within {timeout_s} s")


def up(link: AgentLink, timeout_s: float = 15.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not link.up:
        link.poll(0.05)
    assert link.up, "the link never came up"


def test_each_bad_input_is_refused_and_counted_then_a_good_update_is_accepted(cluster: Any) -> None:
    c = cluster
    c.ground_config(rounds=1, min_updates=1, link={"max_msg_size": MAX_MSG})
    c.key("tester")
    c.key("stranger", allow=False)
    c.start_ground()
    keys = CurveClientKeys(c.keys / "tester.key_secret", c.keys / "ground.key")
    link = AgentLink(c.endpoint, "tester", keys=keys, heartbeat_s=0.3, max_msg_size=MAX_MSG)
    stranger = AgentLink(
        c.endpoint,
        "stranger",
        keys=CurveClientKeys(c.keys / "stranger.key_secret", c.keys / "ground.key"),
        heartbeat_s=0.3,
    )
    try:
        up(link, 30)
        assert link.send(encode(Hello("tester:1", "tester", "test", None, {})))
        task = recv(link, Task)
        assert task.model is not None
        weights = decode_model(task.model)
        delta = {k: np.full_like(v, 1e-3) for k, v in weights.items()}
        name = next(iter(delta))

        def update(uid: str, tensors: dict[str, Any]) -> bytes:
            payload = {"codec": "fp32", "tensors": tensors_to_wire(tensors)}
            return encode(Update(uid, task.task_id, task.round, task.model_version, 100, {}, payload))

        hello = Hello("tester:2", "tester", "test", None, {}).to_wire()
        bad: list[tuple[str, bytes]] = [
            ("malformed", b"\xc1\x00not msgpack"),
            ("unknown_type", msgpack.packb({"v": 1, "type": "GIMME", "id": "tester:3"})),
            ("bad_version", msgpack.packb({**hello, "v": 99})),
            ("bad_dtype", update("tester:4", {**delta, name: delta[name].astype(np.float64)})),
            ("bad_shape", update("tester:5", {**delta, name: delta[name].reshape(-1)[:-1].copy()})),
            ("unknown_tensor", update("tester:6", {**delta, "backdoor": np.zeros(3, np.float32)})),
            ("non_finite", update("tester:7", {**delta, name: np.full_like(delta[name], np.nan)})),
        ]
        for reason, frame in bad:
            assert link.send(frame)
            nack = recv(link, Nack)
            assert nack.reason == reason, (reason, nack)
            assert nack.text  # says what was wrong
        # Oversize: libzmq drops the connection before anything is read; the link comes back.
        assert link.send(b"\x00" * (MAX_MSG + 1))
        end = time.monotonic() + 5
        while time.monotonic() < end:
            stranger.poll(0.05)
            link.poll(0.05)
        assert not stranger.up, "an unknown Curve key got an answer"
        up(link, 30)
        assert link.send(update("tester:8", delta))
        ack = recv(link, Ack)
        assert ack.ref == "tester:8" and not ack.duplicate
        assert link.send(update("tester:8", delta))  # a replay of the same id
        again = recv(link, Ack)
        assert again.ref == "tester:8" and again.duplicate
        c.wait("round 1 closed", lambda: len(c.rounds()) == 1, 30)
        m = c.metrics()
        assert m["orbitfl_updates_accepted_total"] == 1
        for reason, _ in bad:
            assert m[f'orbitfl_updates_refused_total{{reason="{reason}"}}'] == 1, reason
        assert m['orbitfl_updates_refused_total{reason="duplicate"}'] == 1
        assert m['orbitfl_updates_refused_total{reason="unknown_key"}'] >= 1
        assert c.rounds()[0]["updates"] == 1 and c.rounds()[0]["samples"] == 100
        assert c.procs["ground"].poll() is None, "the ground stopped serving"
    finally:
        link.close()
        stranger.close()
