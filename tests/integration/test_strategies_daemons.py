"""Every kind of strategy in the real daemons: a ground process and agent processes over CurveZMQ,
the strategy chosen in the ground's TOML, each agent doing its strategy's part. What is asserted is
what an operator sees: the ground's round log (rounds.jsonl), its metrics and its stored models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.ground.store import GroundStore

from .conftest import Cluster, board_inputs

pytestmark = pytest.mark.integration

BYZANTINE = Path(__file__).with_name("byzantine_agent.py")


class Inputs:
    """Artifacts and partition files made once on the host, as a fleet gets them: the agents then
    start in a second instead of each building its training graphs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: dict[tuple[str, int], tuple[Path, list[Path]]] = {}

    def get(self, model: str, agents: int) -> tuple[Path, list[Path]]:
        key = (model, agents)
        if key not in self.made:
            self.made[key] = board_inputs(self.root / f"{model}-{agents}", agents, model=model)
        return self.made[key]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return Inputs(tmp_path_factory.mktemp("boards"))


def federate(
    inputs: Inputs,
    root: Path,
    strategy: str,
    options: dict[str, Any] | None = None,
    *,
    agents: int = 3,
    byzantine: int = 0,
    rounds: int = 3,
    model: str = "mlp",
    timeout_s: float = 90.0,
    **federation: Any,
) -> tuple[Cluster, list[dict[str, Any]]]:
    """Run ``agents`` agent processes (the last ``byzantine`` of them poisoned) against one ground
    with ``strategy`` until ``rounds`` rounds are logged; returns the stopped cluster and the rows."""
    art, parts = inputs.get(model, agents)
    c = Cluster(root)
    try:
        fed = {"min_updates": agents, "eval_dataset": "digits", "model": model, "strategy": strategy}
        path = c.ground_config(rounds=rounds, **{**fed, **federation})
        opts = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (options or {}).items())
        path.write_text(path.read_text() + f"\n[strategy]\n{opts}")
        c.start_ground()
        for i in range(agents):
            name = f"sat-{i}"
            cfg = c.agent_config(name, i, agents, artifacts=art, data_file=parts[i])
            if model != "mlp":
                cfg.write_text(cfg.read_text().replace("[train]\n", f'[train]\nmodel = "{model}"\n'))
            poisoned = i >= agents - byzantine
            c.start_agent(name, python=[sys.executable, str(BYZANTINE)] if poisoned else None)
        c.wait(f"{rounds} rounds of {strategy}", lambda: len(c.rounds()) >= rounds, timeout_s)
        return c, c.rounds()
    finally:
        c.stop()


def test_robust_strategies_keep_a_byzantine_agent_from_moving_the_model(
    inputs: Inputs, tmp_path: Path
) -> None:
    """One of three agents sends every update sign-flipped ×100: FedAvg is thrown off; coordinate
    median, trimmed mean, Krum and norm clipping keep learning from the two honest ones."""
    final = {}
    for name, opts in (
        ("fedavg", {}),
        ("median", {}),
        ("trimmed", {"beta": 0.34}),
        ("krum", {"f": 1}),
        ("clip", {}),
    ):
        _, rows = federate(inputs, tmp_path / name, name, opts, agents=3, byzantine=1, rounds=3)
        assert all(r["updates"] == 3 for r in rows), rows
        final[name] = rows[-1]["accuracy"]
    for name in ("median", "trimmed", "krum", "clip"):
        assert final[name] >= final["fedavg"] + 0.3, final
        assert final[name] >= 0.5, final


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_server_optimizers_converge_on_digits(inputs: Inputs, tmp_path: Path, name: str) -> None:
    _, rows = federate(inputs, tmp_path, name, rounds=6)
    acc = [r["accuracy"] for r in rows]
    assert acc[-1] >= 0.8 and acc[-1] > acc[0], acc


def test_central_dp_reports_the_privacy_spent_in_logs_metrics_and_rounds(
    inputs: Inputs, tmp_path: Path
) -> None:
    c, rows = federate(inputs, tmp_path, "dp", {"noise_multiplier": 1.0, "delta": 1e-5}, agents=2, rounds=3)
    eps = [r["dp_epsilon"] for r in rows]
    assert 0 < eps[0] < eps[1] < eps[2], eps
    assert all(r["dp_delta"] == 1e-5 for r in rows)
    assert f"dp_epsilon {eps[-1]:.4g}" in c.log("ground")


def test_emsfl_agents_upload_only_their_experts(inputs: Inputs, tmp_path: Path) -> None:
    """Two agents report router affinity in HELLO, the ground assigns each two of the moe's four
    experts, and each update carries only those and the router: about half the model's bytes."""
    _, rows = federate(inputs, tmp_path, "emsfl", model="moe", agents=2, rounds=2)
    full = rows[0]["float32_bytes"] / rows[0]["updates"]  # the whole model as float32, per update
    router = 64 * 4 + 4
    expert = 64 * 32 + 32 + 32 * 10 + 10
    mine = (router + 2 * expert) * 4
    for r in rows:
        per_update = r["uplink_bytes"] / r["updates"]
        assert mine <= per_update < mine + 0.05 * full, (per_update, mine, full)
    store = GroundStore(tmp_path / "ground")
    try:
        v0, v1 = store.load_model(0), store.load_model(1)
        assert v0 is not None and v1 is not None
        changed = sorted({k.split(".")[1] for k in v0 if k.startswith("expert.") and np.any(v0[k] != v1[k])})
        assert changed == ["0", "1", "2", "3"]  # every expert is some agent's, none left behind
    finally:
        store.close()


def test_fedbuff_closes_at_k_with_staleness_weights(inputs: Inputs, tmp_path: Path) -> None:
    """Three agents, K = 2, and a round never waits for a third: each round applies the buffer at
    two updates, and an update built on the previous version counts with weight 1/sqrt(2)."""
    _, rows = federate(inputs, tmp_path, "fedbuff", {"buffer_size": 2}, agents=3, rounds=4, min_updates=10)
    assert [r["updates"] for r in rows] == [2] * 4
    stale = [r for r in rows if r["staleness_max"] >= 1]
    assert stale, rows
    for r in stale:
        assert r["staleness_weight_min"] == pytest.approx((1 + r["staleness_max"]) ** -0.5)


def test_partial_averaging_averages_only_what_was_sent(inputs: Inputs, tmp_path: Path) -> None:
    """Each agent sends the quarter of its blocks that changed most (zeros elsewhere, which zstd
    squeezes out); every coordinate nobody sent keeps its value."""
    _, rows = federate(
        inputs, tmp_path, "partial", {"fraction": 0.25}, agents=2, rounds=1, codec="fp32 | zstd"
    )
    assert rows[0]["uplink_bytes"] < 0.5 * rows[0]["float32_bytes"], rows
    store = GroundStore(tmp_path / "ground")
    try:
        v0, v1 = store.load_model(0), store.load_model(1)
        assert v0 is not None and v1 is not None
        changed = sum(int(np.count_nonzero(v0[k] != v1[k])) for k in v0)
        total = sum(int(v.size) for v in v0.values())
        assert 0 < changed <= 0.5 * total + 2 * 256, (changed, total)  # two agents, a quarter each
    finally:
        store.close()
