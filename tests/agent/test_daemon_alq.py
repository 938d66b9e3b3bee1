"""The agent daemon's side of adaptive LAQ: ``agent.uplink_budget_bytes`` is validated by the
config loader, and the daemon's Board (real ONNX Runtime training) hands the machine the
optimizer's curvature and the budget, so an ``alq`` update fits and the real ground decodes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitfl.agent.daemon import Board
from orbitfl.agent.machine import AgentConfig as MachineConfig
from orbitfl.agent.machine import AgentMachine
from orbitfl.agent.outbox import Outbox
from orbitfl.codec import Payload
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.config import ConfigError, load_agent
from orbitfl.runtime.events import GROUND, LinkUp, MessageReceived, Send, StartTraining
from orbitfl.wire import Update, decode
from orbitfl.wire.compact import as_full

AGENT = """
[agent]
name = "sat-1"
ground = "tcp://127.0.0.1:7700"
state_dir = "state"
insecure = true
{budget}

[data]
partition = 0
num_partitions = 8

[train]
max_batches = 4
"""


def write(tmp_path: Path, budget: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(AGENT.format(budget=budget))
    return p


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", r"agent\.uplink_budget_bytes: must be >= 256, got -1"),
        ("0", r"agent\.uplink_budget_bytes: must be >= 256, got 0"),
        ("100", r"agent\.uplink_budget_bytes: must be >= 256, got 100"),
        ("2.5", r"agent\.uplink_budget_bytes: must be an integer, got float"),
        ('"4k"', r"agent\.uplink_budget_bytes: must be an integer, got str"),
        ("true", r"agent\.uplink_budget_bytes: must be an integer, got bool"),
    ],
)
def test_bad_uplink_budget_names_the_key(tmp_path: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_agent(write(tmp_path, f"uplink_budget_bytes = {value}"))


def test_uplink_budget_is_optional(tmp_path: Path) -> None:
    assert load_agent(write(tmp_path, "")).agent.uplink_budget_bytes is None
    assert load_agent(write(tmp_path, "uplink_budget_bytes = 4096")).agent.uplink_budget_bytes == 4096


def test_learner_gives_curvature_and_budget_so_an_alq_update_fits(tmp_path: Path) -> None:
    budget = 3000
    cfg = load_agent(write(tmp_path, f"uplink_budget_bytes = {budget}"))
    board = Board(cfg)
    weights = board.learner.trainer.get_weights()
    ground = GroundMachine(GroundStore(tmp_path / "g"), GroundConfig(recipe="alq", min_updates=1), weights)
    agent = AgentMachine(Outbox(tmp_path / "a.db"), MachineConfig("sat-1"))
    up: list[bytes] = []
    down: list[bytes] = []
    updates: list[Update] = []

    def run(event: object) -> None:
        for a in agent.handle(event, 0.0):  # type: ignore[arg-type]
            if isinstance(a, Send):
                up.append(a.frame)
                msg = decode(a.frame)
                if isinstance(msg, Update):
                    updates.append(msg)
            elif isinstance(a, StartTraining) and len(updates) < 3:  # three rounds are enough
                done = board.train(a)
                assert done.budget_bytes == budget and done.curvature is not None
                assert set(done.curvature) == set(done.delta)
                for k, d in done.curvature.items():
                    assert d.shape == done.delta[k].shape and d.dtype == np.float32
                    assert np.all(d > 0) and np.any(d > 1e-6)  # Adam's v after real steps
                run(done)

    run(LinkUp())
    while up or down:
        if up:
            down += [
                a.frame
                for a in ground.handle(MessageReceived("sat-1", up.pop(0)), 0.0)
                if isinstance(a, Send)
            ]
        if down:
            run(MessageReceived(GROUND, down.pop(0)))
    assert len(updates) == 3
    bodies = [as_full(u.payload, ground.layout, ground.recipes)["body"] for u in updates]
    assert all(Payload.from_wire(b).nbytes <= budget for b in bodies)
    assert ground.version == 3  # the ground decoded and applied each alq update
