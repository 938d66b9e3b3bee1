"""Agents that get everything from the host, as a board does: artifacts built ahead
(``agent.artifacts``) and their data as a partition file (``data.file``). Real processes, CurveZMQ."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from orbitfl.agent.daemon import load_partition
from orbitfl.data.partition_file import read_partition
from orbitfl.runtime.config import load_agent

from .conftest import board_inputs

pytestmark = pytest.mark.integration


def test_agents_on_prebuilt_artifacts_and_partition_files_federate_and_learn(cluster: Any) -> None:
    art, files = board_inputs(cluster.root, 2)
    before = {p: p.stat().st_mtime_ns for p in art.iterdir()}
    cluster.ground_config(rounds=3, min_updates=2, eval_dataset="digits")
    for i, f in enumerate(files):
        cluster.agent_config(f"sat-{i}", i, 2, artifacts=art, data_file=f)
    cluster.start_ground()
    for i in range(2):
        cluster.start_agent(f"sat-{i}")
    cluster.wait("3 rounds", lambda: len(cluster.rounds()) >= 3, timeout_s=120)
    codes = cluster.stop()
    rounds = cluster.rounds()
    assert [r["round"] for r in rounds[:3]] == [1, 2, 3] and all(r["updates"] == 2 for r in rounds[:3])
    assert rounds[2]["accuracy"] > max(0.5, rounds[0]["accuracy"]), rounds
    assert codes == {"ground": 0, "sat-0": 0, "sat-1": 0}
    for i in range(2):
        assert not (cluster.root / f"sat-{i}" / "artifacts").exists(), "the agent built artifacts itself"
        assert "trained" in cluster.log(f"sat-{i}")
    assert {p: p.stat().st_mtime_ns for p in art.iterdir()} == before, "the agent wrote into the artifacts"


@pytest.mark.parametrize("broken", ["artifacts", "data"])
def test_an_agent_with_missing_board_inputs_exits_2_naming_them(cluster: Any, broken: str) -> None:
    art, (part,) = board_inputs(cluster.root, 1)
    if broken == "artifacts":
        art = cluster.root / "no-such-artifacts"
    else:
        np.savez(part, x=np.zeros((4, 64), np.float32))  # no labels
    cluster.agent_config("sat-0", 0, 1, artifacts=art, data_file=part)
    code = cluster.start_agent("sat-0").wait(60)
    log = cluster.log("sat-0")
    assert code == 2, log
    assert ("agent.artifacts:" if broken == "artifacts" else "data.file:") in log, log
    assert code != -signal.SIGKILL


def test_the_partition_command_writes_what_the_agent_would_load(cluster: Any) -> None:
    cfg = cluster.agent_config("sat-1", 1, 3)
    out = cluster.root / "sat-1.npz"
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "agent", "partition", "--config", str(cfg), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    x, y = read_partition(out)
    want_x, want_y = load_partition(load_agent(cfg).data)
    assert np.array_equal(x, want_x) and np.array_equal(y, want_y) and len(y) > 100
    assert f"{len(y)} samples of digits (partition 1 of 3" in r.stdout
    again = cluster.agent_config("sat-2", 0, 1, data_file=out)
    r = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "agent", "partition", "--config", str(again), "--out", "x.npz"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "data.file is set" in r.stderr
