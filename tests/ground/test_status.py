"""`orbitfl ground status` on a state directory written by the real store, while the store's own
connection stays open (as the daemon's does): what it reports, and one line + exit 2 when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from orbitfl.cli import main
from orbitfl.ground.status import DP_EPSILON_KEY
from orbitfl.ground.store import GroundStore


def config(tmp_path: Path, state: Path) -> Path:
    p = tmp_path / "ground.toml"
    p.write_text(f'[ground]\nbind = "tcp://127.0.0.1:1"\nstate_dir = "{state}"\ninsecure = true\n')
    return p


def test_status_reads_a_live_store_without_disturbing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    store = GroundStore(state)
    try:
        store.save_model(0, {"w": np.zeros(3, np.float32)}, 1000.0)
        store.open_round(1, 0, 1000.0, 1600.0)
        store.register_agent("sat-1", "sat-1", "orbitfl/test", None, {}, 1001.0)
        store.register_agent("sat-2", "sat-2", "orbitfl/test", 0, {}, 1002.0)
        store.accept_update("sat-1:1", "sat-1", 1, 10, 0, 0, b"x" * 100, 1010.0)
        store.close_round(1, 1, {"w": np.ones(3, np.float32)}, 1020.0, 2, 1620.0)
        store.set_meta(DP_EPSILON_KEY, "1.25")
        rows = [
            {"round": 1, "version": 1, "updates": 1, "uplink_bytes": 100, "accuracy": 0.5, "time": 1020.0}
        ]
        (state / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"round": 2, "ver')
        cfg = config(tmp_path, state)
        assert main(["ground", "status", "--config", str(cfg), "--json"]) == 0
        s = json.loads(capsys.readouterr().out)
        # the daemon's connection can still write after the reader has come and gone
        store.accept_update("sat-2:1", "sat-2", 2, 10, 1, 0, b"y" * 50, 1030.0)
    finally:
        store.close()
    assert s["round"] == 2 and s["model_version"] == 1 and s["rounds_closed"] == 1
    assert s["serving"] is None, "no metrics endpoint configured"
    assert s["dp_epsilon"] == 1.25
    assert s["accuracy"] == [{"round": 1, "version": 1, "accuracy": 0.5}], "a torn last line is skipped"
    agents = {a["name"]: a for a in s["agents"]["list"]}
    assert agents["sat-1"]["updates"] == 1 and agents["sat-1"]["last_update"] == 1010.0
    assert agents["sat-2"]["updates"] == 0 and agents["sat-2"]["last_update"] is None
    assert agents["sat-2"]["model_version"] == 0
    assert s["bytes"]["accepted_updates"] == 100
    assert main(["ground", "status", "--config", str(cfg)]) == 0
    text = capsys.readouterr().out
    assert "round 2, model v1" in text and "epsilon 1.25" in text and "2 registered" in text


def test_status_of_a_ground_that_never_ran_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ground", "status", "--config", str(config(tmp_path, tmp_path / "none"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ground.db does not exist" in err
