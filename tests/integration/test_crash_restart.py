"""Real processes killed with SIGKILL: nothing ACKed is lost or counted twice, outboxes survive."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from orbitfl.agent.outbox import Outbox

pytestmark = pytest.mark.integration

TRAIN_SAMPLES = 1438  # the digits training split; the partitions cover it exactly once


def accepted_in_round(ground_state: Path, round_: int) -> list[str]:
    """The agents whose update the ground recorded in ``round_`` (its exactly-once ledger)."""
    db = sqlite3.connect(ground_state / "ground.db")
    try:
        rows = db.execute("SELECT agent_id FROM seen WHERE round=?", (round_,)).fetchall()
    finally:
        db.close()
    return [r[0] for r in rows]


def pending(agent_state: Path) -> int:
    box = Outbox(agent_state / "outbox.sqlite")
    try:
        return box.pending()
    finally:
        box.close()


def test_ground_sigkilled_mid_round_keeps_acked_updates_once_and_takes_outbox_resends(cluster: Any) -> None:
    c = cluster
    c.ground_config(rounds=2, min_updates=3)
    c.agent_config("sat-0", 0, 3)
    c.agent_config("sat-1", 1, 3)
    # sat-2 trains slowly: its update is still in its outbox when the ground dies.
    c.agent_config("sat-2", 2, 3, pace_s=4.0)
    c.start_ground()
    for name in ("sat-0", "sat-1", "sat-2"):
        c.start_agent(name)
    c.wait("two updates ACKed", lambda: c.metrics().get("orbitfl_updates_accepted_total", 0) >= 2)
    c.wait("sat-2 training its task", lambda: "trained r1/sat-2" in c.log("sat-2"))
    assert c.rounds() == [], "round 1 must still be open (it needs 3 updates)"
    assert c.kill("ground") == -signal.SIGKILL
    c.wait("sat-2's update queued while the ground is down", lambda: pending(c.root / "sat-2") == 1, 20)
    time.sleep(1.0)  # past every link timeout: the agents see the ground gone
    c.start_ground()
    c.wait("two rounds closed", lambda: len(c.rounds()) >= 2, 90)
    first = c.rounds()[0]
    assert first["round"] == 1
    assert first["updates"] == 3, first
    assert first["samples"] == TRAIN_SAMPLES, "an update was counted twice or lost"
    agents = accepted_in_round(c.root / "ground", 1)
    assert sorted(agents) == ["sat-0", "sat-1", "sat-2"]
    c.wait("sat-2's outbox drained", lambda: pending(c.root / "sat-2") == 0, 30)
    assert "acknowledged" in c.log("sat-2")


def test_agent_sigkilled_repeatedly_restarts_with_its_outbox_intact(cluster: Any) -> None:
    c = cluster
    c.ground_config(rounds=6, min_updates=1)
    c.agent_config("sat-0", 0, 1)
    c.start_ground()
    rng = random.Random(7)
    db = c.root / "sat-0" / "outbox.sqlite"
    for _ in range(4):
        c.start_agent("sat-0")
        # Start-up (imports, keys) takes seconds on a loaded machine; the kill is meant to land in
        # the rounds of put/ack, so the clock starts once the outbox exists.
        c.wait("sat-0's outbox", db.exists, 60)
        time.sleep(rng.uniform(0.5, 2.5))
        assert c.kill("sat-0") == -signal.SIGKILL
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()
        if len(c.rounds()) >= 6:
            break
    c.start_agent("sat-0")
    c.wait("six rounds", lambda: len(c.rounds()) >= 6, 90)
    rows = c.rounds()[:6]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(r["updates"] == 1 and r["samples"] == TRAIN_SAMPLES for r in rows)
    for r in range(1, 7):
        assert accepted_in_round(c.root / "ground", r) == ["sat-0"]
