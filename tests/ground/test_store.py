"""The ground store on real SQLite files: what is committed is there after reopening."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orbitfl.ground.store import GroundStore, atomic_write


def test_models_rounds_agents_and_updates_survive_reopening(tmp_path: Path) -> None:
    s = GroundStore(tmp_path)
    w = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    s.save_model(0, w, 1.0)
    s.open_round(1, 0, 1.0, 61.0)
    s.register_agent("a1", "peer-a1", "orbitfl/x", None, {"k": 1}, 2.0)
    seq = s.accept_update("a1:1", "a1", 1, 10, 0, 0, b"frame", 3.0)
    s.save_checkpoint(1, seq, {"w": np.ones((2, 3))}, {"n": 1.0})
    s.close()

    s = GroundStore(tmp_path)
    assert s.latest_version() == 0
    m = s.load_model(0)
    assert m is not None and np.array_equal(m["w"], w["w"])
    cur = s.current_round()
    assert cur is not None and (cur.round, cur.base_version, cur.deadline) == (1, 0, 61.0)
    agent = s.agent("a1")
    assert agent is not None and agent.peer == "peer-a1"
    assert s.is_seen("a1:1") and not s.is_seen("a1:2")
    assert s.contributed("a1", 1)
    assert [u.update_id for u in s.logged(1, 0)] == ["a1:1"]
    assert s.round_stats(1) == (1, 10, 5)
    ck = s.load_checkpoint(1)
    assert ck is not None and ck[0] == seq and np.array_equal(ck[1]["w"], np.ones((2, 3)))

    s.close_round(1, 1, {"w": w["w"] + 1}, 5.0, 2, 65.0)
    assert s.latest_version() == 1
    assert s.current_round() is not None and s.current_round().round == 2  # type: ignore[union-attr]
    assert list(s.logged(1, 0)) == []  # the round's log is folded into v1
    assert s.is_seen("a1:1")  # ids stay known forever
    assert s.load_checkpoint(1) is None
    assert s.next_boot() == 1 and s.next_boot() == 2


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    atomic_write(p, b"old")
    atomic_write(p, b"new content")
    assert p.read_bytes() == b"new content"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]
