"""The ground's durable state: SQLite (WAL, synchronous=FULL) plus atomically replaced files.

What lives where and why:
- ``ground.db``: agent registry, every accepted update id (dedupe forever), the log of accepted
  update frames of the open round (the write-ahead record of each contribution), rounds, tasks,
  and the index of model versions. Each accepted update is committed (fsync) before its ACK
  leaves, so an ACKed update survives SIGKILL. Updates that arrive together share one transaction
  and one fsync (``batch``, group commit): the daemon holds their ACKs until it commits.
- ``models/v<N>.msgpack``: each global version (tensors in the wire encoding), written to a
  temporary file, fsynced and renamed, so a reader sees the old file or the new, never a torn one.
- ``ckpt/round-<R>.msgpack`` / ``round-<R>.1.msgpack``: two slots for a snapshot of the strategy's
  partial sums with the log position it covers; ``meta`` names the valid one, in the transaction
  of the rows it covers. Recovery loads it and replays the logged updates after that position, so
  writing the O(model) snapshot is needed only now and then, not per update (and once per batch
  for large updates, which a batch logs without their frames).
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
import numpy.typing as npt

from orbitfl.runtime.schema import apply_schema
from orbitfl.wire.tensors import TensorDict, tensors_from_wire

# PRAGMA user_version of the file (orbitfl.runtime.schema); bump it with a migration below.
SCHEMA_VERSION = 1
# version -> the SQL that makes it from the one before; 1 only stamps the unversioned 0.1.0 files.
MIGRATIONS: dict[int, str] = {1: ""}

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
INT64_MAX = (1 << 63) - 1


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
        apply_schema(self.db, self.root / "ground.db", SCHEMA_VERSION, SCHEMA, MIGRATIONS)
        self._in_batch = False
        # File work that must wait for the batch's commit (see ``batch``), in order.
        self._after_commit: list[Callable[[], None]] = []
        self._batch_slots: dict[int, int] = {}  # round -> checkpoint slot written in this batch

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every write inside is one transaction, committed (one fsync) on leaving.

        The caller must not let anything that depends on those writes being durable (an ACK) out
        before the block ends. Reads inside see the batch's own writes, so dedupe works within it.
        On an exception the batch is still committed: each write in it is whole (``accept_update``
        is a savepoint) and matches what the caller's in-memory state already holds; the exception
        then propagates. Nested calls join the outer batch.
        """
        if self._in_batch:
            yield
            return
        self.db.execute("BEGIN IMMEDIATE")
        self._in_batch = True
        try:
            yield
        finally:
            self._in_batch = False
            self._batch_slots.clear()
            self.db.execute("COMMIT")
            todo, self._after_commit = self._after_commit, []
            for fn in todo:
                fn()

    @property
    def in_batch(self) -> bool:
        return self._in_batch

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One all-or-nothing unit: its own committed transaction, or a savepoint in a batch."""
        if self._in_batch:
            self.db.execute("SAVEPOINT unit")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK TO unit")
                self.db.execute("RELEASE unit")
                raise
            self.db.execute("RELEASE unit")
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            yield

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

    def prune_models(self, keep_last: int, keep_every: int, protect: Iterable[int] = ()) -> list[int]:
        """Retention: delete every stored version except the newest ``keep_last``, each multiple of
        ``keep_every`` (0: none) and those in ``protect`` (what an open round, a download under way
        or a delta base an agent holds still needs); returns the versions deleted.

        The rows go first, in one transaction, then the files (model, codec step, residual): a crash
        in between leaves files no row names, which the next call removes, never a row without its file.
        """
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        versions = [int(r[0]) for r in self.db.execute("SELECT version FROM models ORDER BY version")]
        if not versions:
            return []
        latest = versions[-1]
        keep = {v for v in versions if v > latest - keep_last} | set(protect)
        if keep_every > 0:
            keep |= {v for v in versions if v % keep_every == 0}
        doomed = [v for v in versions if v not in keep]
        if doomed:
            with self._transaction():  # in a batch: with it (a plain commit here would end the batch)
                self.db.executemany("DELETE FROM models WHERE version=?", [(v,) for v in doomed])
        named = set(versions) - set(doomed)

        def sweep() -> None:
            # Files of versions above the latest belong to a round being closed (save_step): left alone.
            for f in (self.root / "models").glob("[vdr]*.msgpack"):
                digits = f.stem[1:]
                if digits.isdigit() and int(digits) < latest and int(digits) not in named:
                    f.unlink(missing_ok=True)

        # In a batch the rows' deletion is not durable until the commit: the files wait for it.
        if self._in_batch:
            self._after_commit.append(sweep)
        else:
            sweep()
        return doomed

    def model_versions(self) -> list[int]:
        return [int(r[0]) for r in self.db.execute("SELECT version FROM models ORDER BY version")]

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
        size: int | None = None,
    ) -> int:
        """Record an accepted update (committed now, or with the batch); returns its log position.
        ``size``: the received frame's length when ``frame`` is left out of the log (b"")."""
        for key, v in (("samples", samples), ("round", round_), ("base_version", base_version)):
            if not 0 <= v <= INT64_MAX:  # the wire checks this too; SQLite would raise OverflowError
                raise ValueError(f"{key} {v} does not fit a SQLite INTEGER")
        with self._transaction():
            self.db.execute(
                "INSERT INTO seen(update_id, agent_id, round, samples, base_version, bytes, accepted_at) "
                "VALUES(?, ?, ?, ?, ?, ?, ?)",
                (
                    update_id,
                    agent_id,
                    round_,
                    samples,
                    base_version,
                    len(frame) if size is None else size,
                    now,
                ),
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
        """Snapshot the strategy's sums covering the log up to ``seq``.

        Two files per round take turns, and the one that counts is named in ``meta`` by the same
        transaction as the rows it covers (now, or with the batch). So a snapshot written inside a
        batch that then never commits is ignored after a crash, and the previous one is intact:
        a checkpoint never counts a row the store does not hold. That is what lets a batch record
        large updates without their frames (see GroundMachine.batch).
        """
        key = f"ckpt/{round_}"
        slot = self._batch_slots.get(round_) if self._in_batch else None
        if slot is None:
            # The slot the committed entry does not name; within a batch, keep rewriting that one
            # (the committed snapshot must survive until the batch commits).
            # A slot-0 file without an entry is read as a pre-slot checkpoint, so a batch (whose
            # entry may never commit) starts a round on slot 1.
            cur = self.get_meta(key)
            slot = 1 - int(cur.split(":")[0]) if cur else int(self._in_batch)
            if self._in_batch:
                self._batch_slots[round_] = slot
        data = tensor_writer(arrays, {"round": round_, "seq": seq, "scalars": dict(scalars)})
        atomic_write(self._ckpt_path(round_, slot), data, sync=self.durable)
        self.set_meta(key, f"{slot}:{seq}")

    def _ckpt_path(self, round_: int, slot: int) -> Path:
        # Slot 0 keeps the name of the single checkpoint file stores had before slots.
        return (
            self.root
            / "ckpt"
            / (f"round-{round_:06d}.msgpack" if slot == 0 else f"round-{round_:06d}.1.msgpack")
        )

    def load_checkpoint(self, round_: int) -> tuple[int, TensorDict, dict[str, float]] | None:
        cur = self.get_meta(f"ckpt/{round_}")
        slot, seq = (int(x) for x in cur.split(":")) if cur is not None else (0, -1)
        path = self._ckpt_path(round_, slot)
        if cur is None and not path.exists():  # (a file without an entry: a store from before slots)
            return None
        arrays, extra = unpack_tensors(path.read_bytes())
        if cur is not None and int(extra["seq"]) != seq:
            raise RuntimeError(f"{path}: covers log position {extra['seq']}, the store says {seq}")
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

    def last_round(self) -> int:
        """The highest round number ever opened (0 before the first)."""
        return int(self.db.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0])

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
        with self._transaction():
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
            self.db.execute("DELETE FROM meta WHERE key=?", (f"ckpt/{round_}",))
        stale = [self._ckpt_path(round_, 0), self._ckpt_path(round_, 1)]

        def drop() -> None:
            for p in stale:
                p.unlink(missing_ok=True)

        if self._in_batch:
            self._after_commit.append(drop)  # a crash before the commit still needs them
        else:
            drop()

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
