"""The ground's durable state: SQLite (WAL, synchronous=FULL) plus atomically replaced files.

What lives where and why:
- ``ground.db``: agent registry, every accepted update id (dedupe forever), the log of accepted
  update frames of the open round (the write-ahead record of each contribution), rounds, tasks,
  and the index of model versions. One transaction per accepted update, committed (fsync) before
  the ACK leaves, so an ACKed update survives SIGKILL.
- ``models/v<N>.msgpack``: each global version (tensors in the wire encoding), written to a
  temporary file, fsynced and renamed, so a reader sees the old file or the new, never a torn one.
- ``ckpt/round-<R>.msgpack``: a snapshot of the strategy's partial sums with the log position it
  covers. Recovery loads it and replays the logged updates after that position, so writing the
  O(model) snapshot is needed only now and then, not per update.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
import numpy.typing as npt

from orbitfl.wire.tensors import TensorDict, tensors_from_wire

SCHEMA = """
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


def atomic_write(path: Path, data: bytes | Callable[[BinaryIO], None], *, sync: bool = True) -> None:
    """Write ``path`` so that a crash leaves the old content or the new, never a mix. ``data`` is
    the bytes, or a function that writes them to the open file (to stream large arrays)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
        f.flush()
        if sync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not sync:
        return
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # make the rename itself durable
    finally:
        os.close(fd)


def tensor_writer(
    tensors: Mapping[str, npt.NDArray[Any]], extra: Mapping[str, Any] | None = None
) -> Callable[[BinaryIO], None]:
    """Stream ``{"tensors": {name: tensor}, "extra": extra}`` as msgpack, writing each array's
    buffer straight to the file: no serialised copy of the model (or of the float64 sums) in memory."""

    def write(f: BinaryIO) -> None:
        pk = msgpack.Packer(use_bin_type=True)
        f.write(pk.pack_map_header(2))
        f.write(pk.pack("tensors"))
        f.write(pk.pack_map_header(len(tensors)))
        for name, arr in tensors.items():
            a = np.ascontiguousarray(arr)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("<"))
            f.write(pk.pack(name))
            f.write(pk.pack_map_header(3))
            f.write(pk.pack("dtype") + pk.pack(a.dtype.name) + pk.pack("shape") + pk.pack(list(a.shape)))
            f.write(pk.pack("data"))
            f.write(struct.pack(">BI", 0xC6, a.nbytes))  # msgpack bin 32 header; the bytes follow
            f.write(a.reshape(-1).view(np.uint8).data)
        f.write(pk.pack("extra") + pk.pack(dict(extra or {})))

    return write


def unpack_tensors(data: bytes) -> tuple[TensorDict, dict[str, Any]]:
    d = msgpack.unpackb(data, raw=False, max_ext_len=0)
    return tensors_from_wire(d["tensors"], "stored model"), dict(d["extra"])


@dataclass(frozen=True)
class StoredRound:
    round: int
    base_version: int
    opened_at: float | None
    deadline: float | None


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    peer: str
    software: str
    model_version: int | None
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class LoggedUpdate:
    seq: int
    update_id: str
    samples: int
    staleness: int
    frame: bytes


class GroundStore:
    """Durable ground state in directory ``root``. Single writer (the ground machine)."""

    def __init__(self, root: Path | str, *, durable: bool = True) -> None:
        """``durable=False`` skips every fsync (SQLite ``synchronous=OFF``): for simulations that
        run thousands of rounds and never need to survive a power cut. Never for a real ground."""
        self.durable = durable
        self.root = Path(root)
        (self.root / "models").mkdir(parents=True, exist_ok=True)
        (self.root / "ckpt").mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.root / "ground.db", isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __del__(self) -> None:
        # Dropped without close() (a test, a start that failed half-way): release the file here.
        # From Python 3.13 a connection collected while open raises ResourceWarning.
        db = getattr(self, "db", None)
        if db is not None:
            db.close()

    # --- meta -------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    def next_boot(self) -> int:
        """A counter bumped at every start, so message ids stay unique across restarts."""
        boot = int(self.get_meta("boot") or 0) + 1
        self.set_meta("boot", str(boot))
        return boot

    # --- models -----------------------------------------------------------------------------------

    def save_model(self, version: int, tensors: Mapping[str, npt.NDArray[Any]], now: float) -> None:
        name = f"v{version:06d}.msgpack"
        atomic_write(
            self.root / "models" / name, tensor_writer(tensors, {"version": version}), sync=self.durable
        )
        self.db.execute(
            "INSERT OR REPLACE INTO models(version, file, created_at) VALUES(?, ?, ?)", (version, name, now)
        )

    def load_model(self, version: int) -> TensorDict | None:
        row = self.db.execute("SELECT file FROM models WHERE version=?", (version,)).fetchone()
        if row is None:
            return None
        tensors, _ = unpack_tensors((self.root / "models" / str(row[0])).read_bytes())
        return tensors

    def save_step(
        self, version: int, step: Mapping[str, Any], residual: Mapping[str, npt.NDArray[Any]]
    ) -> None:
        """The compressed delta that made ``version`` from the one before, and the residual the
        codec left (fed into the next step). Written before the round's closing transaction."""
        data: bytes = msgpack.packb(dict(step), use_bin_type=True)
        atomic_write(self.root / "models" / f"d{version:06d}.msgpack", data, sync=self.durable)
        atomic_write(
            self.root / "models" / f"r{version:06d}.msgpack", tensor_writer(residual), sync=self.durable
        )

    def load_step(self, version: int) -> dict[str, Any] | None:
        path = self.root / "models" / f"d{version:06d}.msgpack"
        if not path.exists() or not self.has_model(version):  # only steps of committed versions
            return None
        d = msgpack.unpackb(path.read_bytes(), raw=False, max_ext_len=0)
        return d if isinstance(d, dict) else None

    def load_residual(self, version: int) -> TensorDict | None:
        path = self.root / "models" / f"r{version:06d}.msgpack"
        if not path.exists() or not self.has_model(version):
            return None
        return unpack_tensors(path.read_bytes())[0]

    def has_model(self, version: int) -> bool:
        return self.db.execute("SELECT 1 FROM models WHERE version=?", (version,)).fetchone() is not None

    def latest_version(self) -> int | None:
        row = self.db.execute("SELECT MAX(version) FROM models").fetchone()
        return None if row[0] is None else int(row[0])

    # --- agents -----------------------------------------------------------------------------------

    def register_agent(
        self,
        agent_id: str,
        peer: str,
        software: str,
        model_version: int | None,
        capabilities: Mapping[str, Any],
        now: float,
    ) -> None:
        caps = json.dumps(capabilities, default=str, sort_keys=True)
        self.db.execute(
            "INSERT INTO agents(agent_id, peer, software, model_version, capabilities, first_seen, "
            "last_seen) VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent_id) DO UPDATE SET peer=excluded.peer, "
            "software=excluded.software, model_version=excluded.model_version, "
            "capabilities=excluded.capabilities, last_seen=excluded.last_seen",
            (agent_id, peer, software, model_version, caps, now, now),
        )

    def agents(self) -> list[AgentRow]:
        rows = self.db.execute(
            "SELECT agent_id, peer, software, model_version, first_seen, last_seen FROM agents "
            "ORDER BY agent_id"
        )
        return [AgentRow(*r) for r in rows]

    def capabilities(self) -> dict[str, dict[str, Any]]:
        """Each registered agent's last HELLO capabilities (agent id -> map)."""
        rows = self.db.execute("SELECT agent_id, capabilities FROM agents ORDER BY agent_id")
        out: dict[str, dict[str, Any]] = {}
        for aid, caps in rows:
            got = json.loads(caps)
            out[str(aid)] = got if isinstance(got, dict) else {}
        return out

    def agent(self, agent_id: str) -> AgentRow | None:
        r = self.db.execute(
            "SELECT agent_id, peer, software, model_version, first_seen, last_seen FROM agents "
            "WHERE agent_id=?",
            (agent_id,),
        ).fetchone()
        return None if r is None else AgentRow(*r)

    # --- updates ----------------------------------------------------------------------------------

    def is_seen(self, update_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM seen WHERE update_id=?", (update_id,)).fetchone() is not None

    def contributed(self, agent_id: str, round_: int) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM seen WHERE agent_id=? AND round=? LIMIT 1", (agent_id, round_)
            ).fetchone()
            is not None
        )

    def accept_update(
        self,
        update_id: str,
        agent_id: str,
        round_: int,
        samples: int,
        base_version: int,
        staleness: int,
        frame: bytes,
        now: float,
    ) -> int:
        """Record an accepted update durably (one committed transaction); returns its log position."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO seen(update_id, agent_id, round, samples, base_version, bytes, accepted_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?)",
                (update_id, agent_id, round_, samples, base_version, len(frame), now),
            )
            cur = self.db.execute(
                "INSERT INTO log(round, update_id, samples, staleness, frame) VALUES(?, ?, ?, ?, ?)",
                (round_, update_id, samples, staleness, frame),
            )
        return int(cur.lastrowid or 0)

    def logged(self, round_: int, after_seq: int) -> Iterator[LoggedUpdate]:
        cur = self.db.execute(
            "SELECT seq, update_id, samples, staleness, frame FROM log WHERE round=? AND seq>? ORDER BY seq",
            (round_, after_seq),
        )
        for r in cur:
            yield LoggedUpdate(int(r[0]), str(r[1]), int(r[2]), int(r[3]), bytes(r[4]))

    def round_stats(self, round_: int) -> tuple[int, int, int]:
        """(updates, samples, bytes) accepted in ``round_``."""
        r = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(samples), 0), COALESCE(SUM(bytes), 0) FROM seen WHERE round=?",
            (round_,),
        ).fetchone()
        return int(r[0]), int(r[1]), int(r[2])

    # --- strategy checkpoints ---------------------------------------------------------------------

    def save_checkpoint(
        self, round_: int, seq: int, arrays: Mapping[str, npt.NDArray[Any]], scalars: Mapping[str, float]
    ) -> None:
        data = tensor_writer(arrays, {"round": round_, "seq": seq, "scalars": dict(scalars)})
        atomic_write(self.root / "ckpt" / f"round-{round_:06d}.msgpack", data, sync=self.durable)

    def load_checkpoint(self, round_: int) -> tuple[int, TensorDict, dict[str, float]] | None:
        path = self.root / "ckpt" / f"round-{round_:06d}.msgpack"
        if not path.exists():
            return None
        arrays, extra = unpack_tensors(path.read_bytes())
        return int(extra["seq"]), arrays, {str(k): float(v) for k, v in extra["scalars"].items()}

    # --- rounds -----------------------------------------------------------------------------------

    def open_round(
        self, round_: int, base_version: int, opened_at: float | None, deadline: float | None
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO rounds(round, base_version, opened_at, deadline) VALUES(?, ?, ?, ?)",
            (round_, base_version, opened_at, deadline),
        )

    def set_deadline(self, round_: int, opened_at: float, deadline: float) -> None:
        self.db.execute(
            "UPDATE rounds SET opened_at=COALESCE(opened_at, ?), deadline=? WHERE round=?",
            (opened_at, deadline, round_),
        )

    def current_round(self) -> StoredRound | None:
        r = self.db.execute(
            "SELECT round, base_version, opened_at, deadline FROM rounds WHERE closed_at IS NULL "
            "ORDER BY round DESC LIMIT 1"
        ).fetchone()
        return None if r is None else StoredRound(int(r[0]), int(r[1]), r[2], r[3])

    def rounds_closed(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM rounds WHERE closed_at IS NOT NULL").fetchone()[0])

    def close_round(
        self,
        round_: int,
        version: int,
        tensors: Mapping[str, npt.NDArray[Any]],
        now: float,
        next_round: int | None,
        next_deadline: float | None,
    ) -> None:
        """Persist the new global version and move to the next round, as one step on restart.

        The model file is written first; the transaction that names it, closes the round, opens the
        next and drops the round's log commits after. A crash in between leaves the round open with
        its log intact, and recovery closes it again to the same result.
        """
        name = f"v{version:06d}.msgpack"
        atomic_write(
            self.root / "models" / name, tensor_writer(tensors, {"version": version}), sync=self.durable
        )
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR REPLACE INTO models(version, file, created_at) VALUES(?, ?, ?)",
                (version, name, now),
            )
            self.db.execute(
                "UPDATE rounds SET closed_at=?, result_version=? WHERE round=?", (now, version, round_)
            )
            self.db.execute("DELETE FROM log WHERE round=?", (round_,))
            if next_round is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO rounds(round, base_version, opened_at, deadline) "
                    "VALUES(?, ?, ?, ?)",
                    (next_round, version, now, next_deadline),
                )
        ckpt = self.root / "ckpt" / f"round-{round_:06d}.msgpack"
        ckpt.unlink(missing_ok=True)

    # --- tasks ------------------------------------------------------------------------------------

    def put_task(
        self, task_id: str, agent_id: str, round_: int, now: float, expires_at: float | None
    ) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO tasks(task_id, agent_id, round, issued_at, expires_at) "
            "VALUES(?, ?, ?, ?, ?)",
            (task_id, agent_id, round_, now, expires_at),
        )

    def task(self, task_id: str) -> tuple[str, int, float | None] | None:
        r = self.db.execute(
            "SELECT agent_id, round, expires_at FROM tasks WHERE task_id=?", (task_id,)
        ).fetchone()
        return None if r is None else (str(r[0]), int(r[1]), r[2])
