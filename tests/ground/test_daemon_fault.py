"""A fault planted inside a real ground daemon (real CurveZMQ link, real store): the frame that hit
it gets a NACK ``internal`` and one log line naming the peer's key, and the daemon serves on."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from orbitfl.apps.demo import free_port
from orbitfl.ground.daemon import GroundDaemon
from orbitfl.runtime.config import parse_ground
from orbitfl.runtime.keys import new_keypair
from orbitfl.runtime.link import AgentLink, CurveClientKeys, Received
from orbitfl.wire import Hello, Message, Nack, Task, decode, encode

pytestmark = pytest.mark.integration


def pump(d: GroundDaemon, link: AgentLink, want: type[Message], timeout_s: float = 20.0) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        d.step(0.02)
        for ev in link.poll(0.02):
            if isinstance(ev, Received):
                m = decode(ev.frame)
                if isinstance(m, want):
                    return m
    pytest.fail(f"no {want.__name__} within {timeout_s} s")


def test_a_planted_fault_costs_one_frame_and_the_daemon_serves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    new_keypair("ground", keys)
    new_keypair("sat1", keys, allow_dir=allowed)
    cfg = parse_ground(
        {
            "ground": {
                "bind": f"tcp://127.0.0.1:{free_port()}",
                "state_dir": "state",
                "secret_key": str(keys / "ground.key_secret"),
                "allowed_keys": str(allowed),
            },
            "federation": {"min_updates": 5},
            "link": {"heartbeat_s": 0.3},
        },
        tmp_path,
    )
    d = GroundDaemon(cfg)
    real = d.store.register_agent
    calls = {"n": 0}

    def faulty(*args: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk I/O error (planted)")
        real(*args, **kw)

    monkeypatch.setattr(d.store, "register_agent", faulty)
    link = AgentLink(
        d.link.endpoint,
        "sat1",
        keys=CurveClientKeys(keys / "sat1.key_secret", keys / "ground.key"),
        heartbeat_s=0.3,
    )
    try:
        caplog.set_level(logging.INFO, logger="orbitfl.ground")
        end = time.monotonic() + 20
        while not link.up and time.monotonic() < end:
            d.step(0.02)
            link.poll(0.02)
        assert link.up
        assert link.send(encode(Hello("sat1:b1.1", "sat1", "t", None, {})))
        nack = pump(d, link, Nack)
        assert nack.reason == "internal" and nack.ref == "sat1:b1.1"
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "'sat1'" in errors[0] and "planted" in errors[0], errors
        assert not any(r.exc_info for r in caplog.records)  # one line, no traceback
        assert d.metrics.snapshot()["updates_refused"].get("internal") == 1
        assert link.send(encode(Hello("sat1:b1.2", "sat1", "t", None, {})))
        task = pump(d, link, Task)  # served on: the agent got its task
        assert task.task_id == "r1/sat1"
    finally:
        link.close()
        d.close()
