"""State folders made by the previous schema (orbitfl 0.1.0: no PRAGMA user_version) are migrated by
the daemons at start; one made by a newer orbitfl is refused with one line and exit 2."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orbitfl.ground import store
from orbitfl.ground.daemon import initial_weights
from orbitfl.ground.store import GroundStore, tensor_writer
from orbitfl.runtime import outbox
from orbitfl.runtime.outbox import Outbox

pytestmark = pytest.mark.integration

# The DDL of orbitfl 0.1.0 (main before schema versions), kept as it was: what old state folders hold.
OLD_GROUND_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agents (
  agent_id TEXT PRIMARY KEY, peer TEXT NOT NULL, software TEXT NOT NULL, model_version INTEGER,
  capabilities TEXT NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS seen (
  update_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, round INTEGER NOT NULL, samples INTEGER NOT NULL,
  base_version INTEGER NOT NULL, bytes INTEGER NOT NULL, accepted_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_round ON seen(round, agent_id);
CREATE TABLE IF NOT EXISTS log (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, round INTEGER NOT NULL, update_id TEXT NOT NULL,
  samples INTEGER NOT NULL, staleness INTEGER NOT NULL, frame BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
  round INTEGER PRIMARY KEY, base_version INTEGER NOT NULL, opened_at REAL, deadline REAL,
  closed_at REAL, result_version INTEGER);
CREATE TABLE IF NOT EXISTS models (version INTEGER PRIMARY KEY, file TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
  task_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, round INTEGER NOT NULL, issued_at REAL NOT NULL,
  expires_at REAL);
"""
OLD_OUTBOX_DDL = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, update_id TEXT UNIQUE NOT NULL, task_id TEXT NOT NULL,
  frame BLOB NOT NULL, acked_offset INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (
  update_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, reason TEXT NOT NULL, dropped_at REAL NOT NULL);
"""


def old_ground_state(root: Path) -> Path:
    """What orbitfl 0.1.0's ground left: its first start (v0, round 1 open) and an agent it knew."""
    root.mkdir(parents=True)
    (root / "models").mkdir()
    (root / "ckpt").mkdir()
    with open(root / "models" / "v000000.msgpack", "wb") as f:
        tensor_writer(initial_weights("mlp", 0), {"version": 0})(f)
    db = sqlite3.connect(root / "ground.db")
    db.executescript(OLD_GROUND_DDL)
    db.executescript(
        """
        INSERT INTO meta VALUES('boot', '1');
        INSERT INTO models VALUES(0, 'v000000.msgpack', 0.0);
        INSERT INTO rounds(round, base_version, opened_at, deadline) VALUES(1, 0, NULL, NULL);
        INSERT INTO agents VALUES('sat-old', 'sat-old', 'orbitfl/0.1.0', 0, '{}', 1.0, 2.0);
        INSERT INTO seen VALUES('sat-old:1', 'sat-old', 0, 100, 0, 5000, 3.0);
        """
    )
    db.commit()
    db.close()
    return root


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def set_user_version(path: Path, v: int) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={v}")
    db.commit()
    db.close()


def tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")}


@pytest.mark.parametrize(
    ("old_ddl", "module", "filename"),
    [(OLD_GROUND_DDL, store, "ground.db"), (OLD_OUTBOX_DDL, outbox, "outbox.sqlite")],
)
def test_a_migrated_old_file_has_the_tables_a_new_one_is_made_with(
    tmp_path: Path, old_ddl: str, module: Any, filename: str
) -> None:
    """A change to a schema without a migration that makes the same tables fails here."""
    old = sqlite3.connect(tmp_path / f"old-{filename}", isolation_level=None)
    old.executescript(old_ddl)
    module.apply_schema(old, tmp_path / filename, module.SCHEMA_VERSION, module.SCHEMA, module.MIGRATIONS)
    new = sqlite3.connect(tmp_path / f"new-{filename}", isolation_level=None)
    module.apply_schema(new, tmp_path / filename, module.SCHEMA_VERSION, module.SCHEMA, module.MIGRATIONS)
    assert tables(old) == tables(new)
    assert user_version(tmp_path / f"old-{filename}") == user_version(tmp_path / f"new-{filename}")
    old.close()
    new.close()


def test_an_old_outbox_keeps_its_pending_update_after_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_OUTBOX_DDL)
    db.execute("INSERT INTO kv VALUES('counter', ?)", (b"7",))
    db.execute(
        "INSERT INTO outbox(update_id, task_id, frame, created_at) VALUES('sat-1:7', 'r3/sat-1', x'01', 1.0)"
    )
    db.commit()
    db.close()
    box = Outbox(path)
    head = box.head()
    assert head is not None and head.update_id == "sat-1:7" and box.pending() == 1
    assert user_version(path) == outbox.SCHEMA_VERSION >= 1
    box.close()


def test_the_ground_migrates_an_old_state_folder_and_refuses_a_newer_one(cluster: Any) -> None:
    c = cluster
    state = old_ground_state(c.root / "ground")
    c.ground_config(rounds=1, min_updates=1)
    c.agent_config("sat-0", 0, 1)  # its state folder is made by the current schema, below
    c.start_ground()
    c.wait("the ground serving the old state", lambda: bool(c.metrics()), 60)
    assert c.stop()["ground"] == 0
    assert user_version(state / "ground.db") == store.SCHEMA_VERSION >= 1
    s = GroundStore(state)
    assert s.is_seen("sat-old:1") and s.agent("sat-old") is not None  # the old rows came along
    assert s.current_round() is not None and s.current_round().round == 1  # type: ignore[union-attr]
    assert s.get_meta("boot") == "2" and s.latest_version() == 0, "the ground did not run on the old store"
    s.close()

    set_user_version(state / "ground.db", store.SCHEMA_VERSION + 1)
    res = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "ground", "serve", "--config", str(c.root / "ground.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr, res.stderr
    assert str(state / "ground.db") in res.stderr and "newer orbitfl" in res.stderr

    box = c.root / "sat-0" / "outbox.sqlite"
    Outbox(box).close()
    set_user_version(box, outbox.SCHEMA_VERSION + 1)
    res = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "agent", "run", "--config", str(c.root / "sat-0.toml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(box) in res.stderr, res.stderr
