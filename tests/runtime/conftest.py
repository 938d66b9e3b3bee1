"""Real ZeroMQ sockets on 127.0.0.1 and real Curve keys made in a temporary folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orbitfl.runtime.keys import new_keypair
from orbitfl.runtime.link import AgentLink, CurveClientKeys, CurveServerKeys, GroundLink, LinkEvent, Received


@dataclass(frozen=True)
class Keys:
    dir: Path
    allowed: Path

    def server(self) -> CurveServerKeys:
        return CurveServerKeys(self.dir / "ground.key_secret", self.allowed)

    def client(self, name: str) -> CurveClientKeys:
        return CurveClientKeys(self.dir / f"{name}.key_secret", self.dir / "ground.key")


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    d = tmp_path / "keys"
    allowed = tmp_path / "allowed"
    new_keypair("ground", d)
    for name in ("sat-1", "sat-2"):
        new_keypair(name, d, allow_dir=allowed)
    new_keypair("stranger", d)  # a valid key pair that is not in the allow-list
    return Keys(d, allowed)


Pump = Callable[..., tuple[list[Received], list[LinkEvent]]]


@pytest.fixture(name="pump")
def pump_fixture() -> Pump:
    return pump


def pump(
    ground: GroundLink | None,
    agents: list[AgentLink],
    until: Callable[[list[Received], list[LinkEvent]], bool],
    timeout_s: float = 10.0,
) -> tuple[list[Received], list[LinkEvent]]:
    """Poll every side until ``until(ground_frames, agent_events)`` holds or the time is up."""
    got: list[Received] = []
    events: list[LinkEvent] = []
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if ground is not None:
            got += ground.poll(0.02)
        for a in agents:
            events += a.poll(0.02)
        if until(got, events):
            break
    return got, events
