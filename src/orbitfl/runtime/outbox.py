"""A durable outbox: the frames not yet ACKed by the other side, plus the model the sender holds.

The agent keeps its updates here until the ground ACKs them; a ground station keeps the updates it
has ACKed to agents here until the aggregator ACKs them (orbitfl.ground.station).

SQLite in WAL mode with ``synchronous=FULL``: a row is on disk when ``put`` returns, and a SIGKILL
at any moment leaves every committed row whole (SQLite's journal never exposes a torn row). An
update stays until the ground ACKs it (``ack``) or refuses it for good (``drop``); its upload offset
is kept so a chunked transfer resumes in the next contact where it stopped.

Update ids come from a counter stored in the same transaction as the row, so an id is never reused,
even across a crash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy.typing as npt

from orbitfl.runtime.schema import apply_schema
from orbitfl.wire.tensors import TensorDict, tensors_from_wire, tensors_to_wire

# PRAGMA user_version of the file (orbitfl.runtime.schema); bump it with a migration below.
SCHEMA_VERSION = 1
# version -> the SQL that makes it from the one before; 1 only stamps the unversioned 0.1.0 files.
MIGRATIONS: dict[int, str] = {1: ""}

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, update_id TEXT UNIQUE NOT NULL, task_id TEXT NOT NULL,
  frame BLOB NOT NULL, acked_offset INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dropped (
  update_id TEXT PRIMARY KEY, task_id TEXT NOT NULL, reason TEXT NOT NULL, dropped_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    update_id: str
    task_id: str
    frame: bytes
    acked_offset: int


class Outbox:
    """Durable agent state in one SQLite file. Single writer (the agent machine)."""

    def __init__(self, path: Path | str, *, durable: bool = True) -> None:
        """``durable=False`` (SQLite ``synchronous=OFF``) is for simulations only."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        apply_schema(self.db, self.path, SCHEMA_VERSION, SCHEMA, MIGRATIONS)

    def close(self) -> None:
        self.db.close()

    def __del__(self) -> None:
        # Dropped without close() (a test, a start that failed half-way): release the file here.
        # From Python 3.13 a connection collected while open raises ResourceWarning.
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    # --- key/value --------------------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.db.execute("DELETE FROM kv WHERE key=?", (key,))
        else:
            self.db.execute("INSERT OR REPLACE INTO kv(key, value) VALUES(?, ?)", (key, value))

    def next_boot(self) -> int:
        boot = int(self.get("boot") or b"0") + 1
        self.set("boot", str(boot).encode())
        return boot

    # --- updates ----------------------------------------------------------------------------------

    def put(
        self,
        task_id: str,
        make_frame: Callable[[int], tuple[str, bytes]],
        now: float,
        kv: Mapping[str, bytes] | None = None,
    ) -> str:
        """Store a new update. ``make_frame(counter) -> (update_id, frame)`` builds it with the next
        counter value; counter, row and ``kv`` (e.g. the codec's error-feedback state that produced
        this update) commit together, so a crash never leaves one without the other."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            counter = int(self.get("counter") or b"0") + 1
            update_id, frame = make_frame(counter)
            self.db.execute(
                "INSERT OR REPLACE INTO kv(key, value) VALUES('counter', ?)", (str(counter).encode(),)
            )
            self.db.execute(
                "INSERT INTO outbox(update_id, task_id, frame, created_at) VALUES(?, ?, ?, ?)",
                (update_id, task_id, frame, now),
            )
            for key, value in (kv or {}).items():
                self.set(key, value)
        return update_id

    def head(self) -> OutboxItem | None:
        """The oldest update not yet ACKed: uploads go in order."""
        r = self.db.execute(
            "SELECT seq, update_id, task_id, frame, acked_offset FROM outbox ORDER BY seq LIMIT 1"
        ).fetchone()
        return None if r is None else OutboxItem(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4]))

    def items(self) -> list[OutboxItem]:
        rows = self.db.execute("SELECT seq, update_id, task_id, frame, acked_offset FROM outbox ORDER BY seq")
        return [OutboxItem(int(r[0]), str(r[1]), str(r[2]), bytes(r[3]), int(r[4])) for r in rows]

    def pending(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def has_task(self, task_id: str) -> bool:
        q = "SELECT 1 FROM outbox WHERE task_id=? UNION SELECT 1 FROM dropped WHERE task_id=?"
        return self.db.execute(q, (task_id, task_id)).fetchone() is not None

    def set_offset(self, update_id: str, offset: int) -> None:
        # Each call is a durable commit; the machine calls it every OFFSET_SAVE_BYTES of progress and
        # at link down, since losing it only means resending some chunks.
        self.db.execute("UPDATE outbox SET acked_offset=? WHERE update_id=?", (offset, update_id))

    def ack(self, update_id: str) -> bool:
        """The ground holds it durably: forget it. Returns whether it was here."""
        cur = self.db.execute("DELETE FROM outbox WHERE update_id=?", (update_id,))
        return cur.rowcount > 0

    def drop(self, update_id: str, reason: str, now: float) -> bool:
        """The ground refused it for good: forget it, remember why (and that its task is done)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            r = self.db.execute("SELECT task_id FROM outbox WHERE update_id=?", (update_id,)).fetchone()
            if r is None:
                return False
            self.db.execute("DELETE FROM outbox WHERE update_id=?", (update_id,))
            self.db.execute(
                "INSERT OR REPLACE INTO dropped(update_id, task_id, reason, dropped_at) VALUES(?, ?, ?, ?)",
                (update_id, r[0], reason, now),
            )
        return True

    # --- the global model held --------------------------------------------------------------------

    def save_model(self, version: int, tensors: Mapping[str, npt.NDArray[Any]]) -> None:
        blob: bytes = msgpack.packb(
            {"version": version, "tensors": tensors_to_wire(tensors)}, use_bin_type=True
        )
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.set("model", blob)

    def load_model(self) -> tuple[int, TensorDict] | None:
        blob = self.get("model")
        if blob is None:
            return None
        d = msgpack.unpackb(blob, raw=False, max_ext_len=0)
        return int(d["version"]), tensors_from_wire(d["tensors"], "stored model")
