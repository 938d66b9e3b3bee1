"""`orbitfl agent run` with codec "alq": real ground and agent processes over CurveZMQ. Agents with
`agent.uplink_budget_bytes` send updates sized to it (curvature from ONNX Runtime's Adam state);
an agent without a budget refuses to encode, saying why, and the others carry the rounds."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

BUDGET = 3000


def with_budget(path: Path, budget: int) -> None:
    text = path.read_text()
    path.write_text(text.replace("[agent]\n", f"[agent]\nuplink_budget_bytes = {budget}\n", 1))


def test_alq_rounds_close_with_updates_within_the_agents_budget(cluster: Any) -> None:
    c = cluster
    c.ground_config(rounds=2, min_updates=2, codec="alq")
    for i, name in enumerate(("sat-0", "sat-1", "sat-2")):
        cfg = c.agent_config(name, i, 3)
        if name != "sat-2":
            with_budget(cfg, BUDGET)
    c.start_ground()
    c.start_agent("sat-2")  # first, so it surely gets a task of round 1
    c.wait("sat-2 refusing", lambda: "cannot encode" in c.log("sat-2"), 60)
    assert "'alq'" in c.log("sat-2") and "budget_bytes" in c.log("sat-2")
    assert c.rounds() == []
    for name in ("sat-0", "sat-1"):
        c.start_agent(name)
    c.wait("two alq rounds closed", lambda: len(c.rounds()) >= 2, 90)
    for name in ("sat-0", "sat-1"):
        assert "cannot encode" not in c.log(name)
    sizes = update_sizes(c.root / "ground")
    assert len(sizes) >= 4
    # The payload fits the budget; the frame adds the envelope (ids, metrics, recipe, ~0.5 kB).
    # A float32 update of this model is 38.8 kB.
    assert all(BUDGET // 2 < n <= BUDGET + 1024 for n in sizes), sizes
    assert c.stop() == {"ground": 0, "sat-0": 0, "sat-1": 0, "sat-2": 0}


def update_sizes(ground_state: Path) -> list[int]:
    """Frame bytes of every update the ground accepted (its exactly-once ledger)."""
    db = sqlite3.connect(ground_state / "ground.db")
    try:
        return [int(r[0]) for r in db.execute("SELECT bytes FROM seen").fetchall()]
    finally:
        db.close()
