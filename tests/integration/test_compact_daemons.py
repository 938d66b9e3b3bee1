"""The compact UPDATE payload between real processes: `orbitfl ground serve` offers it in TASK, real
`orbitfl agent run` processes send it over CurveZMQ and the round closes on it; with the offer
turned off the same agents send the full form, which the ground accepts as it always did."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

RECIPE = "topk:0.05+ef | sign | zstd"


def accepted_sizes(ground_state: Path) -> list[int]:
    """Frame bytes of every update the ground accepted (its exactly-once ledger)."""
    db = sqlite3.connect(ground_state / "ground.db")
    try:
        return [int(r[0]) for r in db.execute("SELECT bytes FROM seen").fetchall()]
    finally:
        db.close()


def run_round(c: Any, **federation: Any) -> tuple[dict[str, float], list[int]]:
    c.ground_config(rounds=1, min_updates=2, codec=RECIPE, **federation)
    for i, name in enumerate(("sat-0", "sat-1")):
        c.agent_config(name, i, 2)
    c.start_ground()
    for name in ("sat-0", "sat-1"):
        c.start_agent(name)
    c.wait("the round closed", lambda: len(c.rounds()) >= 1, 90)
    c.wait("metrics", lambda: c.metrics().get("orbitfl_updates_accepted_total", 0) >= 2, 10)
    m = c.metrics()
    sizes = accepted_sizes(c.root / "ground")
    assert c.stop() == {"ground": 0, "sat-0": 0, "sat-1": 0}
    return m, sizes


def test_a_round_closes_on_compact_updates(cluster: Any) -> None:
    m, sizes = run_round(cluster)
    assert m["orbitfl_updates_accepted_total"] == 2
    assert m["orbitfl_updates_compact_total"] == 2
    assert not any(k.startswith("orbitfl_updates_refused_total") and v for k, v in m.items()), m
    assert len(sizes) == 2
    # The zoo's mlp has 4 tensors; the full form would carry their names, shapes and the recipe twice.
    assert all(n < 2000 for n in sizes), sizes


def test_without_the_offer_the_agents_full_form_is_accepted(cluster: Any) -> None:
    m, sizes = run_round(cluster, compact_updates=False)
    assert m["orbitfl_updates_accepted_total"] == 2
    assert m["orbitfl_updates_compact_total"] == 0
    assert len(sizes) == 2
