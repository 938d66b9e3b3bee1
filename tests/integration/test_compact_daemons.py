"""The compact UPDATE payload between real processes: `orbitfl ground serve` offers it in TASK, real
`orbitfl agent run` processes send it over CurveZMQ and the round closes on it. (The full form
without the offer: tests/agent/test_machine.py, and every full-form frame of the fuzz suite.)"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration

RECIPE = "topk:0.05+ef | sign | zstd"


def test_a_round_closes_on_compact_updates(cluster: Any) -> None:
    c = cluster
    c.ground_config(rounds=1, min_updates=2, codec=RECIPE)
    for i, name in enumerate(("sat-0", "sat-1")):
        c.agent_config(name, i, 2)
    c.start_ground()
    for name in ("sat-0", "sat-1"):
        c.start_agent(name)
    c.wait("the round closed", lambda: len(c.rounds()) >= 1, 90)
    c.wait("metrics", lambda: c.metrics().get("orbitfl_updates_accepted_total", 0) >= 2, 10)
    m = c.metrics()
    assert m["orbitfl_updates_accepted_total"] == 2
    assert m["orbitfl_updates_compact_total"] == 2  # both came compact, neither was refused
    assert not any(k.startswith("orbitfl_updates_refused_total") and v for k, v in m.items()), m
    assert c.rounds()[0]["updates"] == 2
    assert c.stop() == {"ground": 0, "sat-0": 0, "sat-1": 0}
