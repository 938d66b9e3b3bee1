"""Retention of global versions (federation.keep_models / keep_every) on a real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.ground.store import GroundStore

W = {"w": np.zeros((3, 2), np.float32)}


def stored_files(root: Path) -> set[str]:
    return {p.name for p in (root / "models").iterdir()}


def test_prune_keeps_the_newest_every_kth_and_the_protected_and_deletes_their_files(tmp_path: Path) -> None:
    s = GroundStore(tmp_path)
    for v in range(12):
        s.save_model(v, {"w": W["w"] + v}, float(v))
        s.save_step(v, {"step": v}, {"w": W["w"]})  # a downlink codec's step and residual
    deleted = s.prune_models(3, 5, protect={2})
    kept = [0, 2, 5, 9, 10, 11]
    assert s.model_versions() == kept
    assert deleted == [v for v in range(12) if v not in kept]
    assert stored_files(tmp_path) == {f"{k}{v:06d}.msgpack" for v in kept for k in "vdr"}
    for v in kept:
        m = s.load_model(v)
        assert m is not None and float(m["w"][0, 0]) == v
    assert s.load_model(1) is None and s.load_step(1) is None
    s.close()
    # what a crash between the rows' transaction and the unlinks leaves is removed next time
    (tmp_path / "models" / "v000001.msgpack").write_bytes(b"orphan")
    s = GroundStore(tmp_path)
    s.save_model(12, W, 12.0)
    s.prune_models(3, 5, protect={2})
    assert "v000001.msgpack" not in stored_files(tmp_path)
    assert s.model_versions() == [0, 2, 5, 10, 11, 12]
    s.close()


def test_prune_leaves_the_files_of_a_round_being_closed(tmp_path: Path) -> None:
    s = GroundStore(tmp_path)
    for v in range(4):
        s.save_model(v, W, 0.0)
    s.save_step(4, {"step": 4}, W)  # written before close_round names v4
    s.prune_models(1, 0)
    assert s.model_versions() == [3]
    assert {"d000004.msgpack", "r000004.msgpack"} <= stored_files(tmp_path)
    s.close()


def test_prune_refuses_to_keep_nothing(tmp_path: Path) -> None:
    s = GroundStore(tmp_path)
    with pytest.raises(ValueError, match="keep_last"):
        s.prune_models(0, 0)
    s.close()


def test_the_machine_keeps_what_retention_says_and_every_version_an_agent_holds(kit: Any) -> None:
    g = kit.ground(min_updates=1, keep_models=2, keep_every=3)
    g.rx("a", kit.hello("a"))
    g.rx("a", kit.update_frame("a", 1, base=0, rnd=1))
    assert g.m.version == 1
    # b holds v1 and goes silent: its next download is a delta from v1, so v1 must stay.
    g.rx("b", kit.hello("b", version=1))
    for r in range(2, 8):
        g.rx("a", kit.update_frame("a", r, base=r - 1, rnd=r))
    assert g.m.version == 7
    assert g.m.store.model_versions() == [0, 1, 3, 6, 7]
    assert stored_files(g.root) == {f"v{v:06d}.msgpack" for v in (0, 1, 3, 6, 7)}


def test_without_keep_models_the_machine_keeps_every_version(kit: Any) -> None:
    g = kit.ground(min_updates=1)
    g.rx("a", kit.hello("a"))
    for r in range(1, 5):
        g.rx("a", kit.update_frame("a", r, base=r - 1, rnd=r))
    assert g.m.store.model_versions() == [0, 1, 2, 3, 4]
