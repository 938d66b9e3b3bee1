"""A fleet of simulated agents in one process, speaking the wire protocol to a real ground.

Each simulated agent is one DEALER socket (CurveZMQ with its own allow-listed key, or plaintext)
that does what a board's daemon does on the wire and nothing else: HELLO, take the TASK (resuming
chunked downloads, CHUNK_ACKing each piece), send an UPDATE (chunked when larger than a chunk,
with the same window and retransmission as the agent), wait for its ACK, take the next TASK. No
training: each update's delta is a constant that depends only on (agent, round), so an audit can
recompute every stored global model from the ids the store says it accepted and catch an update
that was lost or folded twice.

Used by ``tools/load_ground.py`` (bursts and the load test) and the integration tests; it is the
client half of a measurement, not a second agent implementation (no outbox, no disk).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import zmq

from orbitfl.runtime.link import load_public, load_secret
from orbitfl.transfer import Outbound, Reassembler
from orbitfl.wire.compact import FORM as COMPACT_FORM
from orbitfl.wire.compact import Layout, compact_payload, recipe_id
from orbitfl.wire.errors import WireError
from orbitfl.wire.messages import (
    Ack,
    Chunk,
    ChunkAck,
    Heartbeat,
    Hello,
    Message,
    Model,
    Nack,
    Task,
    Update,
    decode,
    encode,
)
from orbitfl.wire.tensors import tensors_from_wire, tensors_to_wire

GROUND = "ground"


def delta_value(agent: str, round_: int) -> float:
    """The constant every coordinate of ``agent``'s update for ``round_`` carries: distinct per
    (agent, round), so a double-counted or missing update moves the average."""
    h = int.from_bytes(hashlib.sha256(f"{agent}/{round_}".encode()).digest()[:4], "little")
    # Either sign, so the weights stay near their start and float32 keeps its resolution there;
    # rounded to float32 as it travels.
    return float(np.float32(((h % 2000) - 999.5) * 1e-4))


def samples_of(agent: str) -> int:
    return 10 + int(agent.rsplit("-", 1)[-1]) % 7 if agent.rsplit("-", 1)[-1].isdigit() else 10


@dataclass
class FleetStats:
    """What the fleet saw; latencies in seconds."""

    acked: set[str] = field(default_factory=set)  # update ids ACKed (first time or duplicate)
    duplicate_acks: int = 0
    nacks: dict[str, int] = field(default_factory=dict)
    sent_updates: int = 0
    resends: int = 0
    latency_upload: list[float] = field(default_factory=list)  # first byte sent -> ACK
    latency_ack: list[float] = field(default_factory=list)  # last byte sent -> ACK
    tasks: int = 0
    models: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def percentile(self, which: list[float], q: float) -> float:
        return float(np.percentile(which, q)) if which else float("nan")


@dataclass
class _Sim:
    name: str
    sock: zmq.Socket[bytes]
    counter: int = 0
    held: int | None = None
    task: Task | None = None
    pending: tuple[str, bytes] | None = None  # (update id, frame) until ACKed
    upload: Outbound | None = None
    started: float = 0.0
    finished: float | None = None
    last_progress: float = 0.0
    hello_at: float = -1e9
    last_sent: float = 0.0
    last_rx: float = 0.0
    due: float = 0.0  # when the next update is "trained"
    done_rounds: set[int] = field(default_factory=set)

    def next_id(self) -> str:
        self.counter += 1
        return f"{self.name}:{self.counter}"


class Fleet:
    """``n`` simulated agents named ``{prefix}-{i}``. ``keys_dir`` holds ``<name>.key_secret`` and
    ``ground.key`` (None: plaintext). ``shapes``: the model's tensors (float32)."""

    def __init__(
        self,
        endpoint: str,
        names: Iterable[str],
        shapes: Mapping[str, tuple[int, ...]],
        *,
        keys_dir: Path | None,
        chunk_bytes: int = 256 << 10,
        window: int = 8,
        retransmit_s: float = 5.0,
        heartbeat_s: float = 1.0,
        think_s: float = 0.0,
        spool_dir: Path | None = None,
        max_msg_size: int = 16 << 20,
        rounds: int | None = None,
    ) -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.shapes = dict(shapes)
        self.chunk_bytes = chunk_bytes
        self.window = window
        self.retransmit_s = retransmit_s
        self.heartbeat_s = heartbeat_s
        self.think_s = think_s
        self.rounds = rounds
        self.stats = FleetStats()
        self.poller = zmq.Poller()
        self.sims: dict[zmq.Socket[bytes], _Sim] = {}
        # Downloads are spooled so the load generator's own memory does not grow with the fleet.
        self.reasm = Reassembler(
            max_msg_size * 4, max_transfers_per_peer=1, max_held_bytes=1 << 62, spool_dir=spool_dir
        )
        server = load_public(keys_dir / "ground.key") if keys_dir is not None else None
        self.tag = secrets.token_hex(2)
        for name in names:
            s = self.ctx.socket(zmq.DEALER)
            s.linger = 0
            s.routing_id = name.encode() + b"\x00" + secrets.token_bytes(6)
            s.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
            if keys_dir is not None:
                pub, sec = load_secret(keys_dir / f"{name}.key_secret")
                s.curve_publickey, s.curve_secretkey, s.curve_serverkey = pub, sec, server
            s.connect(endpoint)
            self.sims[s] = _Sim(name, s)
            self.poller.register(s, zmq.POLLIN)

    # --- sending ----------------------------------------------------------------------------------

    def _send(self, sim: _Sim, frame: bytes) -> None:
        try:
            sim.sock.send(frame, zmq.NOBLOCK)
            sim.last_sent = time.monotonic()
            self.stats.bytes_up += len(frame)
        except zmq.Again:
            pass  # not connected yet: the retransmission timer sends it again

    def _hello(self, sim: _Sim, now: float) -> None:
        sim.hello_at = now
        mid = f"{sim.name}:h{self.tag}.{sim.counter}"
        sim.counter += 1
        self._send(sim, encode(Hello(mid, sim.name, "orbitfl-loadgen", sim.held, {})))

    def _make_update(self, sim: _Sim, task: Task) -> tuple[str, bytes]:
        c = delta_value(sim.name, task.round)
        tensors = {k: np.full(s, c, np.float32) for k, s in self.shapes.items()}
        payload: dict[str, Any] = {"codec": "fp32", "tensors": tensors_to_wire(tensors)}
        if task.compact is not None:  # as an agent does: the compact form when the task offers it
            layout = Layout.of({k: (tuple(s), "float32") for k, s in self.shapes.items()})
            offer = task.compact
            if (offer.recipe_id, offer.layout_id) == (recipe_id(task.recipe), layout.id):
                form = min(offer.form, COMPACT_FORM)
                payload = compact_payload(payload, task.recipe, layout, form) or payload
        # The id names (run, round) as the decimal counter the protocol asks of an UPDATE id, so a
        # resend after a lost ACK carries the same id and another run never reuses one.
        uid = f"{sim.name}:{int(self.tag, 16) * 10**12 + task.round}"
        msg = Update(
            uid,
            task.task_id,
            task.round,
            task.model_version,
            samples_of(sim.name),
            {},
            payload,
            omit_task_id=task.compact is not None and task.compact.form >= 2,
        )
        return uid, encode(msg)

    def _start_upload(self, sim: _Sim, now: float) -> None:
        assert sim.pending is not None
        uid, frame = sim.pending
        sim.started, sim.finished, sim.last_progress = now, None, now
        self.stats.sent_updates += 1
        if len(frame) <= self.chunk_bytes:
            sim.upload = None
            self._send(sim, frame)
            sim.finished = now
            return
        sim.upload = Outbound(uid, frame, self.chunk_bytes, self.window, last_progress=now)
        self._pump(sim, now)

    def _pump(self, sim: _Sim, now: float) -> None:
        assert sim.upload is not None
        for f in sim.upload.next_chunks(sim.next_id):
            self._send(sim, f)
        if sim.upload.sent >= sim.upload.total and sim.finished is None:
            sim.finished = now

    # --- receiving --------------------------------------------------------------------------------

    def _on_frame(self, sim: _Sim, frame: bytes, now: float) -> None:
        sim.last_rx = now
        if frame == b"":
            return  # a heartbeat answer
        self.stats.bytes_down += len(frame)
        try:
            msg = decode(frame)
        except WireError:
            key = "undecodable-from-ground"
            self.stats.nacks[key] = self.stats.nacks.get(key, 0) + 1
            return
        self._on_msg(sim, msg, now)

    def _on_msg(self, sim: _Sim, msg: Message, now: float) -> None:
        if isinstance(msg, Chunk):
            try:
                ack, whole = self.reasm.accept(sim.name, msg, now, sim.next_id)
            except WireError:
                ack = encode(
                    ChunkAck(sim.next_id(), msg.transfer, self.reasm.next_offset(sim.name, msg.transfer))
                )
                whole = None
            if ack is not None:
                self._send(sim, ack)
            if whole is not None:
                self._on_frame(sim, whole, now)
        elif isinstance(msg, ChunkAck):
            if sim.upload is not None and sim.upload.transfer == msg.transfer:
                before = sim.upload.acked
                sim.upload.on_ack(msg, now)
                if sim.upload.acked > before:
                    sim.last_progress = now
                self._pump(sim, now)
        elif isinstance(msg, Task):
            self.stats.tasks += 1
            if msg.model is not None:
                sim.held = msg.model.version
            elif msg.model_version == sim.held:
                pass
            if msg.round in sim.done_rounds or (sim.task is not None and sim.task.task_id == msg.task_id):
                return
            sim.task = msg
            sim.due = now + self.think_s
        elif isinstance(msg, Model):
            self.stats.models += 1
            assert msg.model is not None
            sim.held = msg.model.version
        elif isinstance(msg, Ack):
            if sim.pending is not None and msg.ref == sim.pending[0]:
                self.stats.acked.add(msg.ref)
                self.stats.duplicate_acks += int(msg.duplicate)
                self.stats.latency_upload.append(now - sim.started)
                self.stats.latency_ack.append(now - (sim.finished or sim.started))
                assert sim.task is not None
                sim.done_rounds.add(sim.task.round)
                sim.pending, sim.upload, sim.task = None, None, None
        elif isinstance(msg, Nack):
            self.stats.nacks[msg.reason] = self.stats.nacks.get(msg.reason, 0) + 1
            if sim.pending is not None and msg.ref == sim.pending[0]:
                if msg.reason == "not_registered":
                    self._hello(sim, now)
                elif msg.reason in ("stale",):
                    sim.pending, sim.upload, sim.task = None, None, None  # wait for the next task
                else:
                    sim.last_progress = now  # try again after the retransmission timeout

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, until: Callable[[FleetStats], bool], timeout_s: float) -> FleetStats:
        """Run until ``until(stats)`` or ``timeout_s``; returns the stats."""
        end = time.monotonic() + timeout_s
        sims = list(self.sims.values())
        next_timer = 0.0
        while time.monotonic() < end and not until(self.stats):
            for sock, _ in self.poller.poll(50):
                sim = self.sims[sock]
                now = time.monotonic()
                for _ in range(64):
                    try:
                        frame = sim.sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_frame(sim, frame, now)
            now = time.monotonic()
            if now < next_timer:
                continue
            next_timer = now + 0.05
            for sim in sims:
                if now - sim.last_sent > self.heartbeat_s:
                    # As an idle agent does: the HEARTBEAT message tells the ground it is online.
                    self._send(sim, encode(Heartbeat(sim.next_id(), sim.held, int(sim.pending is not None))))
                if sim.task is None and sim.pending is None:
                    quiet = 2 * self.retransmit_s
                    if now - sim.hello_at > quiet and now - sim.last_rx > quiet:
                        self._hello(sim, now)  # nothing heard (a lost HELLO, a restarted ground)
                    continue
                if sim.pending is None and sim.task is not None and now >= sim.due:
                    if self.rounds is not None and sim.task.round > self.rounds:
                        continue
                    sim.pending = self._make_update(sim, sim.task)
                    self._start_upload(sim, now)
                elif sim.pending is not None and now - sim.last_progress > self.retransmit_s:
                    self.stats.resends += 1
                    sim.last_progress = now
                    if sim.upload is not None:
                        # As the agent does: resend only the last chunk; the ground's CHUNK_ACK
                        # says where it really is and the window moves on from there.
                        if sim.upload.done:  # all confirmed, no ACK: the ground may have restarted
                            sim.upload.sent = max(0, sim.upload.total - self.chunk_bytes)
                        else:
                            sim.upload.pause()
                        self._pump(sim, now)
                    else:
                        self._start_upload(sim, now)  # the ACK was lost, or the ground restarted
        return self.stats

    def close(self) -> None:
        for s in self.sims:
            s.close(linger=0)
        self.ctx.term()


# --- the audit ------------------------------------------------------------------------------------


@dataclass
class Audit:
    accepted: int  # rows in the store's ``seen`` table from this fleet
    lost: int  # ACKed ids the store does not hold
    double_counted: int  # rounds whose stored model is not FedAvg of its accepted updates exactly once
    rounds_checked: int
    max_error: float


def task_round(update_id: str, default: int) -> int:
    """The round of the task an update answered, from the id ``_make_update`` gives it."""
    tail = update_id.rsplit(":", 1)[-1]
    return int(tail) % 10**12 if tail.isdigit() else default


def _load_model(path: Path) -> dict[str, npt.NDArray[Any]]:
    d = msgpack.unpackb(path.read_bytes(), raw=False, max_ext_len=0)
    return tensors_from_wire(d["tensors"], str(path))


def audit(state_dir: Path, acked: Iterable[str]) -> Audit:
    """Check the ground's store against what the fleet saw: every ACKed id was accepted (none
    lost), and every closed round's model is the previous one plus the samples-weighted mean of
    the deltas its ``seen`` rows name, each once (none double-counted or missing)."""
    db = sqlite3.connect(f"file:{state_dir / 'ground.db'}?mode=ro", uri=True)
    try:
        seen = {
            str(r[0]): (str(r[1]), int(r[2]), int(r[3]))
            for r in db.execute("SELECT update_id, agent_id, round, samples FROM seen")
        }
        rounds = list(
            db.execute(
                "SELECT round, base_version, result_version FROM rounds WHERE result_version IS NOT NULL "
                "ORDER BY round"
            )
        )
        files = {int(v): str(f) for v, f in db.execute("SELECT version, file FROM models")}
    finally:
        db.close()
    lost = sum(1 for i in acked if i not in seen)
    bad = 0
    worst = 0.0
    for rnd, base, result in rounds:
        # An update built on the previous round's task (stale by one) carries that round's value.
        rows = [(a, task_round(i, r), n) for i, (a, r, n) in seen.items() if r == rnd]
        if not rows or base not in files or result not in files:
            continue
        expect = sum(n * delta_value(a, t) for a, t, n in rows) / sum(n for _, _, n in rows)
        old = _load_model(state_dir / "models" / files[base])
        new = _load_model(state_dir / "models" / files[result])
        # FedAvg sums in float64 and rounds once to float32, so the result is within one float32
        # spacing of the exact value; one update too many or too few moves it by ~1e-4 / updates.
        err = max(
            float(
                np.max(np.abs(new[k].astype(np.float64) - old[k] - expect) - 2 * np.abs(np.spacing(new[k])))
            )
            for k in old
        )
        worst = max(worst, err)
        bad += int(err > 1e-9)
    return Audit(len(seen), lost, bad, len(rounds), worst)
