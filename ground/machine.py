"""The ground's federation logic as a state machine: events in, actions out, no sockets, no clock.

``GroundMachine.handle(event, now)`` decodes and checks every frame, registers agents, hands out
tasks, ingests updates exactly once, closes rounds and sends models down. ``now`` is seconds on a
clock that survives restarts (the daemon passes wall time; tests pass virtual time), because round
deadlines are stored.

Exactly-once: an UPDATE is checked, then recorded in the store in one committed transaction (its
id in ``seen`` and its frame in the round's log), then folded into the strategy, and only then is
the ACK action returned. A repeated id is ACKed again with ``duplicate`` and not folded twice.
After a crash the machine rebuilds the strategy from the last checkpoint plus the logged frames.
The daemon handles what arrives together inside ``batch()`` (group commit: one transaction and one
fsync for all of it) and sends the returned ACKs only after the batch has committed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from orbitfl.codec.inputs import check_recipe
from orbitfl.ground.admission import NORMS_META, Admission, Guards, delta_norm
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import FedAvg, Strategy
from orbitfl.runtime.events import (
    Action,
    Count,
    Event,
    Gauge,
    Log,
    MessageReceived,
    PeerSilent,
    RoundClosed,
    Send,
    Tick,
)
from orbitfl.transfer import DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW, Outbound, Reassembler, Segments
from orbitfl.wire.compact import COMPACT, Layout, recipe_id
from orbitfl.wire.compact import FORM as COMPACT_FORM
from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import (
    DEFAULT_LIMITS,
    Ack,
    Bye,
    Chunk,
    ChunkAck,
    CompactOffer,
    Heartbeat,
    Hello,
    Limits,
    Message,
    Model,
    ModelBlob,
    Nack,
    Task,
    Update,
    decode,
    encode,
    encode_around,
    hello_digest,
    peek_id,
    task_id_for,
)
from orbitfl.wire.model_codec import apply_step, encode_codec_chain, encode_model
from orbitfl.wire.payload import decode_payload, encode_payload, new_codec_state
from orbitfl.wire.tensors import TensorDict, check_against_model

# Store meta key: the JSON list of every recipe text tasks have named (see _known_recipes).
RECIPES_META = "compact.recipes"


@dataclass
class GroundConfig:
    ground_id: str = "ground"
    rounds: int | None = None  # None: keep going
    min_updates: int = 2  # a round closes as soon as it has this many updates
    round_seconds: float = 600.0  # ... or at its deadline, if it has min_updates_at_deadline
    min_updates_at_deadline: int = 1  # fewer at the deadline: the deadline moves on, nothing is dropped
    max_staleness: int = 1  # accept updates built on a version up to this many versions old
    recipe: str = "fp32"  # codec recipe agents use for their updates
    hints: dict[str, Any] = field(default_factory=dict)
    task_ttl: float | None = None  # explicit expiry policy for tasks; None: a task never expires
    checkpoint_every: int = 32  # snapshot the strategy's sums every N accepted updates
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    window: int = DEFAULT_WINDOW
    retransmit_seconds: float = 30.0
    max_transfer_bytes: int = 512 << 20
    # Downlink chunks sent but not yet acknowledged, over all agents: what the ground holds in
    # socket queues when a round closes and every agent wants the new model at once (each agent's
    # own window is reached only while others are idle). Transfers beyond it wait their turn.
    downlink_inflight_bytes: int = 16 << 20
    # A partial upload with no chunk for this long is abandoned and its spool file deleted (long
    # enough to span the gap between two contact windows of a low orbit several times over).
    spool_ttl: float = 24 * 3600.0
    compress_downlink: bool = True
    limits: Limits = DEFAULT_LIMITS
    # The link names each peer by what it proved (the allow-listed Curve key's name). Requiring the
    # HELLO's agent_id to equal it stops one authenticated board from speaking as another.
    bind_agent_to_peer: bool = True
    # None: new versions go down whole or as a lossless XOR delta. A codec recipe (e.g.
    # "quant:8 | zstd"): each new version is made exactly representable as the previous one plus
    # the recipe's decoded delta, and agents receive that compressed delta (see _compress_step).
    downlink_recipe: str | None = None
    # orbitfl.models.zoo.fingerprint of the federation's model: sent in every TASK, and a HELLO
    # stating another one is refused (model_mismatch). None: not checked.
    model_fingerprint: str | None = None
    # Retention: after each round keep the newest ``keep_models`` versions plus every
    # ``keep_every``-th (0: none) and what a round, a download or an agent's delta base needs.
    # None: keep every version (the simulator, tests).
    keep_models: int | None = None
    keep_every: int = 0
    guards: Guards = field(default_factory=Guards)  # the poisoning guards (ground/admission.py)
    # Offer the compact UPDATE form in every TASK (orbitfl.wire.compact). The full form is always
    # accepted; False only stops the offer (e.g. for agents forwarding to an older aggregator).
    compact_updates: bool = True

    def __post_init__(self) -> None:
        if self.min_updates < 1 or self.min_updates_at_deadline < 1:
            raise ValueError("min_updates and min_updates_at_deadline must be >= 1")
        if self.round_seconds <= 0:
            raise ValueError(f"round_seconds must be > 0, got {self.round_seconds}")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be >= 1 or None, got {self.rounds}")
        if self.max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {self.max_staleness}")
        if self.downlink_recipe in ("fp32", ""):
            self.downlink_recipe = None
        if self.downlink_recipe is not None:
            check_recipe(self.downlink_recipe)  # a recipe the codec cannot parse fails here, by name
        if not self.ground_id or ":" in self.ground_id:
            raise ValueError("ground_id must be non-empty and contain no ':'")


def _blob_bytes(blob: ModelBlob) -> int:
    n: int = len(msgpack.packb(blob.to_wire(), use_bin_type=True))
    return n


@dataclass
class _Peer:
    agent_id: str
    online: bool = True
    model_version: int | None = None
    last_seen: float = 0.0
    max_samples: int | None = None  # what the agent registered in its HELLO (None: the config cap)


class GroundMachine:
    """One ground station's federation state. Single-threaded: call ``handle`` from one thread."""

    def __init__(
        self,
        store: GroundStore,
        config: GroundConfig,
        initial_model: Mapping[str, npt.NDArray[Any]] | None = None,
        strategy: Strategy | None = None,
    ) -> None:
        self.store = store
        self.cfg = config
        self.strategy = strategy or FedAvg()
        self._boot = store.next_boot()
        self._ids = itertools.count(1)
        self.peers: dict[str, _Peer] = {}  # link peer -> agent
        # Partial uploads are spooled next to the store, so a ground restart does not make agents
        # start their uploads over.
        self.reasm = Reassembler(config.max_transfer_bytes, spool_dir=store.root / "spool")
        self.outbound: dict[tuple[str, str], Outbound] = {}
        self._blobs: dict[tuple[int, int | None], ModelBlob] = {}  # encoded downlink models
        # The same, msgpack-encoded once and shared by every agent's transfer, with the sha256 of
        # each message head + blob (see _frame).
        self._blob_wire: dict[int, tuple[ModelBlob, bytes, dict[bytes, Any]]] = {}  # by id(blob)
        self.refused: dict[str, int] = {}
        self.accepted = 0
        self.duplicates = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.continued_from: int | None = None  # closed rounds when a finished federation resumed
        latest = store.latest_version()
        if latest is None:
            if initial_model is None:
                raise ValueError("an empty store needs an initial model")
            store.save_model(0, initial_model, 0.0)
            store.open_round(1, 0, None, None)
            latest = 0
        self.version = latest
        global_ = store.load_model(latest)
        assert global_ is not None
        self.global_model: TensorDict = global_
        self.spec = {k: (tuple(v.shape), v.dtype.name) for k, v in self.global_model.items()}
        self.shapes = {k: shape for k, (shape, _) in self.spec.items()}
        self.layout = Layout.of(self.spec)
        self.recipes = self._known_recipes()
        # Tensors an update carries besides the model's (SCAFFOLD's control-variate deltas): decoded
        # and checked like the model's, handed to the strategy, left out of the admission's norm.
        self._extra = self.strategy.extra_tensors(self.shapes)
        self._spec_in = {**self.spec, **{k: (tuple(s), "float32") for k, s in self._extra.items()}}
        self._shapes_in = {**self.shapes, **self._extra}
        self.admission = Admission(config.guards, self.global_model)
        # What agents said in HELLO (e.g. EMS-FL's router affinity), for the strategy's task hints.
        self._caps: dict[str, dict[str, Any]] = store.capabilities()
        # agent -> (digest, software, fingerprint) of its last full HELLO; its capabilities are
        # the ones in _caps
        self._hellos: dict[str, tuple[bytes, str, str | None]] = {}
        self.last_report: dict[str, float] = {}  # the strategy's figures of the last round closed
        self._outstanding: dict[str, tuple[str, float]] = {}  # agent -> (task id, issued) unanswered
        self._continue_finished()
        self._recover()

    # --- recovery ---------------------------------------------------------------------------------

    def _known_recipes(self) -> dict[bytes, str]:
        """Recipe id -> text of every recipe this ground has asked for: compact updates still in
        the round's log (or on their way) keep their meaning after the configured recipe changes."""
        stored = self.store.get_meta(RECIPES_META)
        loaded = json.loads(stored) if stored else []
        texts = [t for t in loaded if isinstance(t, str)] if isinstance(loaded, list) else []
        if self.cfg.recipe not in texts:
            texts.append(self.cfg.recipe)
            self.store.set_meta(RECIPES_META, json.dumps(texts))
        return {recipe_id(t): t for t in texts}

    def _decode(self, msg: Update) -> TensorDict:
        return decode_payload(msg.payload, self._shapes_in, layout=self.layout, recipes=self.recipes)

    def _continue_finished(self) -> None:
        """A federation that ended at an earlier ``rounds`` goes on when more rounds are configured
        (or none, i.e. endless): the next round opens on the latest global version."""
        if self.store.current_round() is not None:
            return
        closed = self.store.rounds_closed()
        if closed == 0 or (self.cfg.rounds is not None and closed >= self.cfg.rounds):
            return
        self.store.open_round(self.store.last_round() + 1, self.version, None, None)
        self.continued_from = closed

    def _recover(self) -> None:
        """Rebuild the open round's partial sums: checkpoint, then replay the log after it."""
        cur = self.store.current_round()
        self.round = cur.round if cur is not None else 0
        self.deadline = cur.deadline if cur is not None else None
        self.strategy.reset(self.global_model)
        self._since_ckpt = 0
        self._seq = 0
        self._ckpt_due = False
        # A frame at least this large is worth less on disk than a checkpoint at the end of its
        # batch (a quarter of the sums' size: four such updates cost one snapshot).
        self._frameless_from = max(64 << 10, sum(a.nbytes for a in self.strategy.state()[0].values()) // 4)
        if cur is None:
            return
        ck = self.store.load_checkpoint(cur.round)
        if ck is not None:
            self._seq, arrays, scalars = ck
            self.strategy.load_state(arrays, scalars)
        norms: list[float] = []  # the checkpoint's meta holds the window up to its position
        for row in self.store.logged(cur.round, self._seq):
            if not row.frame:
                # Recorded without its frame by a batch, whose closing checkpoint commits with it.
                raise RuntimeError(f"log row {row.seq} ({row.update_id}) has no frame and no checkpoint")
            msg = decode(row.frame, self.cfg.limits)
            assert isinstance(msg, Update)
            delta = self._decode(msg)
            norms.append(delta_norm(self._model_part(delta)))
            self.strategy.accumulate(delta, row.samples, row.staleness)
            self._seq = row.seq
            self._since_ckpt += 1
        self.admission.load_norms(self.store.get_meta(NORMS_META), norms)
        for aid in (a.agent_id for a in self.store.agents()):
            row_ = self.store.agent(aid)
            assert row_ is not None
            self.peers.setdefault(
                row_.peer,
                _Peer(aid, online=False, model_version=row_.model_version, last_seen=row_.last_seen),
            )

    # --- helpers ----------------------------------------------------------------------------------

    def _id(self) -> str:
        return f"{self.cfg.ground_id}:b{self._boot}.{next(self._ids)}"

    @property
    def done(self) -> bool:
        return self.round == 0 or (
            self.cfg.rounds is not None and self.store.rounds_closed() >= self.cfg.rounds
        )

    def _refuse(self, peer: str, err: WireError, out: list[Action]) -> None:
        self.refused[err.reason.value] = self.refused.get(err.reason.value, 0) + 1
        out.append(Count("refused", (("reason", err.reason.value),)))
        out.append(
            Log(
                "WARNING",
                f"refused frame from {peer!r} (id {err.ref!r}): {err}",
                f"{peer}:{err.reason.value}",
            )
        )
        out.append(self._send(peer, Nack(self._id(), err.ref, err.reason.value, err.text)))

    def _send(self, peer: str, msg: Message | bytes) -> Send:
        frame = msg if isinstance(msg, bytes) else encode(msg)
        self.bytes_out += len(frame)
        return Send(peer, frame)

    def _send_big(self, peer: str, msg: Message, now: float, out: list[Action]) -> None:
        """Send directly, or as a resumable chunked transfer when larger than a chunk.

        A transfer already under way for the same message id is resumed as it is (its frame is
        kept), so the agent's partial copy stays valid across contacts; ids of TASK and MODEL name
        their content (round, agent, base version), so the same id means the same model bytes.
        """
        key = (peer, msg.id)
        ob = self.outbound.get(key)
        if ob is not None:
            ob.pause()
            ob.last_progress = now
            self._pump(peer, ob, out)
            return
        frame = self._frame(msg)
        if isinstance(frame, bytes):
            self.bytes_out += len(frame)
            out.append(Send(peer, frame))
            return
        # one downlink transfer per peer at a time: a newer one replaces an unfinished older one
        for k in [k for k in self.outbound if k[0] == peer]:
            del self.outbound[k]
        ob = Outbound(msg.id, frame, self.cfg.chunk_bytes, self.cfg.window, last_progress=now)
        self.outbound[key] = ob
        self._pump(peer, ob, out)

    def _frame(self, msg: Message) -> bytes | Segments:
        """``msg`` encoded; a TASK or MODEL carrying a model larger than a chunk comes back as
        Segments around the shared encoded blob, so N agents downloading the same version hold one
        copy of it, not N."""
        blob = getattr(msg, "model", None)
        if not isinstance(blob, ModelBlob):
            return encode(msg)
        cached = self._blob_wire.get(id(blob))
        if cached is None or cached[0] is not blob:
            if len(self._blob_wire) >= 16:
                self._blob_wire.clear()
            cached = self._blob_wire[id(blob)] = (blob, msgpack.packb(blob.to_wire(), use_bin_type=True), {})
        _, wire, shas = cached
        head, tail = encode_around(msg, "model", wire)
        if len(head) + len(wire) + len(tail) <= self.cfg.chunk_bytes:
            return head + wire + tail
        sha = shas.get(head)
        if sha is None:
            sha = shas[head] = hashlib.sha256(head)
            sha.update(wire)
        return Segments([head, wire, tail], sha, hashed=2)

    def _room(self) -> int:
        """Downlink bytes that may still go out before some are acknowledged."""
        flying = sum(ob.sent - ob.acked for ob in self.outbound.values())
        return max(self.cfg.downlink_inflight_bytes - flying, 0)

    def _pump(self, peer: str, ob: Outbound, out: list[Action]) -> None:
        room = self._room()
        if room < self.cfg.chunk_bytes and all(o.sent == o.acked for o in self.outbound.values()):
            room = self.cfg.chunk_bytes  # a budget below one chunk still lets one through at a time
        for f in ob.next_chunks(self._id, max_bytes=room):
            self.bytes_out += len(f)
            out.append(Send(peer, f))

    def _pump_waiting(self, out: list[Action]) -> None:
        """Give room freed by acknowledgements to transfers waiting for it, longest waiting first."""
        if self._room() < self.cfg.chunk_bytes:
            return
        waiting = [(ob.last_progress, k) for k, ob in self.outbound.items() if ob.sent < ob.total]
        for _, (peer, tid) in sorted(waiting):
            p = self.peers.get(peer)
            if p is None or not p.online:
                continue
            self._pump(peer, self.outbound[(peer, tid)], out)
            if self._room() < self.cfg.chunk_bytes:
                return

    def _model_blob(self, held: int | None) -> ModelBlob:
        key = (self.version, held)
        blob = self._blobs.get(key)
        if blob is None:
            if len(self._blobs) >= 8 or any(v != self.version for v, _ in self._blobs):
                self._blobs.clear()  # keep only a few blobs of the current version
                self._blob_wire.clear()
            blob = self._blobs[key] = self._make_blob(held)
        return blob

    def _make_blob(self, held: int | None) -> ModelBlob:
        base = None if held is None or held == self.version else self.store.load_model(held)
        if base is not None and held is not None and self.cfg.downlink_recipe is not None:
            steps = [self.store.load_step(v) for v in range(held + 1, self.version + 1)]
            full = encode_model(self.version, self.global_model, compress=self.cfg.compress_downlink)
            if all(st is not None for st in steps):
                chain = encode_codec_chain(self.version, self.global_model, held, [st for st in steps if st])
                if _blob_bytes(chain) < _blob_bytes(full):
                    return chain
            return full
        if base is None or {k: (tuple(v.shape), v.dtype.name) for k, v in base.items()} != self.spec:
            return encode_model(self.version, self.global_model, compress=self.cfg.compress_downlink)
        return encode_model(self.version, self.global_model, base, held, compress=self.cfg.compress_downlink)

    def _model_part(self, delta: TensorDict) -> TensorDict:
        return {k: v for k, v in delta.items() if k not in self._extra} if self._extra else delta

    def _task_id(self, agent: str) -> str:
        return self._round_task_id(self.round, agent)

    def _offer_task(self, peer: str, p: _Peer, now: float, out: list[Action]) -> None:
        """Give ``p`` the current round's task, or the final model when training is over."""
        if self.done:
            if p.model_version != self.version:
                held = "none" if p.model_version is None else p.model_version
                mid = f"{self.cfg.ground_id}:model.v{self.version}.{p.agent_id}.from{held}"
                self._send_big(peer, Model(mid, self._model_blob(p.model_version)), now, out)
            return
        if self.store.contributed(p.agent_id, self.round):
            return
        tid = self._task_id(p.agent_id)
        expires = None if self.cfg.task_ttl is None else now + self.cfg.task_ttl
        self.store.put_task(tid, p.agent_id, self.round, now, expires)
        self._outstanding[p.agent_id] = (tid, now)
        blob = None if p.model_version == self.version else self._model_blob(p.model_version)
        deadline_in = None if self.deadline is None else max(0.0, self.deadline - now)
        # The id depends only on what the task is, so a resend of the same task continues the same
        # chunked transfer.
        held = "none" if p.model_version is None else p.model_version
        mid = f"{self.cfg.ground_id}:task.{tid}.from{held}"
        # The strategy's own hints first; the operator's configured hints win on a clash.
        hints = {**self.strategy.task_hints(self._caps), **self.cfg.hints}
        self._send_big(
            peer,
            Task(
                mid,
                tid,
                self.round,
                self.version,
                self.cfg.recipe,
                hints,
                deadline_in,
                blob,
                self.cfg.model_fingerprint,
                CompactOffer(recipe_id(self.cfg.recipe), self.layout.id, COMPACT_FORM)
                if self.cfg.compact_updates
                else None,
            ),
            now,
            out,
        )
        out.append(Count("tasks_sent"))

    # --- the machine ------------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the events handled inside are stored in one transaction, committed (one
        fsync) when the block ends. The caller must execute the actions they returned (the ACKs)
        only after the block, and then every ACKed update is durable.

        Large updates are recorded without their frames inside a batch; before the commit the
        strategy's sums are checkpointed once, in the same transaction, so recovery needs no
        frame of them (see GroundStore.save_checkpoint).
        """
        with self.store.batch():
            try:
                yield
            finally:
                if self._ckpt_due and not self.done:
                    arrays, scalars = self.strategy.state()
                    self.store.save_checkpoint(self.round, self._seq, arrays, scalars)
                    self._since_ckpt = 0
                    self._ckpt_due = False

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if self.deadline is None and not self.done:
            self.deadline = now + self.cfg.round_seconds
            self.store.set_deadline(self.round, now, self.deadline)
        if isinstance(event, MessageReceived):
            self._on_frame(event.peer, event.frame, now, out)
        elif isinstance(event, Tick):
            self._on_tick(now, out)
        elif isinstance(event, PeerSilent):
            p = self.peers.get(event.peer)
            if p is not None:
                p.online = False  # its tasks and its place in the round stay
            for (peer, _), ob in self.outbound.items():
                if peer == event.peer:
                    ob.pause()
            out.append(
                Log(
                    "INFO",
                    f"peer {event.peer!r} went silent; its pending work is kept",
                    f"{event.peer}:silent",
                )
            )
        return out

    def _on_frame(self, peer: str, frame: bytes, now: float, out: list[Action], count: bool = True) -> None:
        if count:
            self.bytes_in += len(frame)
            out.append(Count("bytes_in", (), len(frame)))
        try:
            msg = decode(frame, self.cfg.limits)
            p = self.peers.get(peer)
            if p is not None:
                if not isinstance(msg, (Hello, Update)):  # those two check their ids with more context
                    self.admission.check_id(msg, p.agent_id)
                p.last_seen = now
                p.online = True
            if isinstance(msg, Hello):
                self._on_hello(peer, msg, now, out)
            elif isinstance(msg, Update):
                self._on_update(peer, msg, frame, now, out)
            elif isinstance(msg, Chunk):
                self._on_chunk(peer, msg, now, out)
            elif isinstance(msg, ChunkAck):
                ob = self.outbound.get((peer, msg.transfer))
                if ob is not None:
                    ob.on_ack(msg, now)
                    if ob.done:
                        del self.outbound[(peer, msg.transfer)]
                    else:
                        self._pump(peer, ob, out)
                    self._pump_waiting(out)
            elif isinstance(msg, Heartbeat):
                if p is not None and msg.model_version is not None:
                    p.model_version = msg.model_version
            elif isinstance(msg, Bye):
                if p is not None:
                    p.online = False
                out.append(
                    Log("INFO", f"{peer!r} said bye ({msg.reason}); its pending work is kept", f"{peer}:bye")
                )
            elif isinstance(msg, Nack):
                out.append(
                    Log("WARNING", f"{peer!r} refused {msg.ref!r}: {msg.reason}: {msg.text}", f"{peer}:nack")
                )
                out.append(Count("nacks_received", (("reason", msg.reason),)))
                self._on_model_refused(peer, msg, now, out)
            elif isinstance(msg, Ack):
                pass
            else:
                self._on_other(peer, msg, now, out)
        except WireError as err:
            self._refuse(peer, err, out)
        except Exception as exc:  # a bug or a failing disk must cost one frame, never the daemon
            ref = peek_id(bytes(frame))
            self.refused[Reason.INTERNAL.value] = self.refused.get(Reason.INTERNAL.value, 0) + 1
            out.append(Count("refused", (("reason", Reason.INTERNAL.value),)))
            out.append(
                Log(
                    "ERROR",
                    f"internal error on a frame from peer {peer!r} (id {ref!r}): "
                    f"{type(exc).__name__}: {str(exc)[:300]}",
                )
            )
            out.append(self._send(peer, Nack(self._id(), ref, Reason.INTERNAL.value, type(exc).__name__)))
            self._resync(out)

    def _task_of(self, msg: Update, agent_id: str) -> tuple[str, int, float | None] | None:
        """The stored (agent, round, expires_at) of the task ``msg`` answers (None: none given)."""
        return self.store.task(msg.task_id)

    def _on_other(self, peer: str, msg: Message, now: float, out: list[Action]) -> None:
        """A message type the agents' side does not take (the aggregator takes RELAY here)."""
        raise WireError(Reason.UNKNOWN_TYPE, f"{msg.TYPE} is not something an agent sends", msg.id)

    def _resync(self, out: list[Action]) -> None:
        """After an internal error, rebuild the in-memory round from the store, so an update that
        was recorded but not folded in (or folded in but not recorded) cannot skew the aggregate;
        the agent resends it and gets a duplicate ACK."""
        try:
            latest = self.store.latest_version()
            if latest is not None and latest != self.version:
                model = self.store.load_model(latest)
                if model is not None:
                    self.version, self.global_model = latest, model
                    self.admission.set_model(model)
            if self.store.in_batch and self.store.round_stats(self.round)[0] == self.strategy.updates:
                # Store and sums agree (the failure changed neither, e.g. a write rolled back to
                # its savepoint): nothing to rebuild, and this batch's frameless rows could not be
                # replayed before its closing checkpoint anyway.
                return
            self._recover()
        except Exception as exc:
            out.append(
                Log("ERROR", f"could not rebuild the round from the store: {type(exc).__name__}: {exc}")
            )

    def _on_hello(self, peer: str, msg: Hello, now: float, out: list[Action]) -> None:
        if msg.digest is not None:
            said = self._hellos.get(msg.agent_id)
            if said is None or said[0] != msg.digest:
                raise WireError(
                    Reason.NOT_REGISTERED,
                    f"this ground holds no HELLO of {msg.agent_id!r} with digest {msg.digest.hex()}: "
                    "send the full HELLO",
                    msg.id,
                )
            msg = msg.expanded(said[1], self._caps[msg.agent_id], said[2])
        registered = self.admission.check_hello(msg, peer, self.cfg.bind_agent_to_peer)
        mine = self.cfg.model_fingerprint
        if mine is not None and msg.model_fingerprint is not None and msg.model_fingerprint != mine:
            raise WireError(
                Reason.MODEL_MISMATCH,
                f"agent {msg.agent_id!r} trains model {msg.model_fingerprint}, but this federation's "
                f"model is {mine}: give the agent the ground's federation.model as train.model",
                msg.id,
            )
        for other, q in list(self.peers.items()):
            if q.agent_id == msg.agent_id and other != peer:
                del self.peers[other]  # the agent reconnected under a new routing id
        p = _Peer(msg.agent_id, True, msg.model_version, now, registered)
        self.peers[peer] = p
        self.store.register_agent(msg.agent_id, peer, msg.software, msg.model_version, msg.capabilities, now)
        self._caps[msg.agent_id] = dict(msg.capabilities)
        # What the agent's short HELLOs will stand for (kept in memory: after a restart the ground
        # refuses a short HELLO once, and the agent sends the full one).
        digest = hello_digest(msg.software, msg.capabilities, msg.model_fingerprint)
        self._hellos[msg.agent_id] = (digest, msg.software, msg.model_fingerprint)
        out.append(Count("hellos"))
        held = "no model" if msg.model_version is None else f"model v{msg.model_version}"
        out.append(Log("INFO", f"{msg.agent_id!r} joined ({msg.software}, holding {held})", f"{peer}:hello"))
        out.append(Gauge("agents_known", len(self.store.agents())))
        self._offer_task(peer, p, now, out)

    def _on_model_refused(self, peer: str, msg: Nack, now: float, out: list[Action]) -> None:
        """The agent could not use a task's or model's weights (e.g. a delta against a version it no
        longer holds, because our record of its version was stale): send the model whole, once.
        A second refusal waits for the agent's next HELLO, so a broken agent cannot make us loop."""
        p = self.peers.get(peer)
        prefix = f"{self.cfg.ground_id}:"
        if p is None or msg.ref is None or not msg.ref.startswith((prefix + "task.", prefix + "model.")):
            return
        if msg.reason == Reason.MODEL_MISMATCH.value:
            return  # resending the same model cannot help; the agent asks again when fixed
        if p.model_version is not None:
            p.model_version = None
            self._offer_task(peer, p, now, out)

    def _on_chunk(self, peer: str, c: Chunk, now: float, out: list[Action]) -> None:
        if peer not in self.peers:
            raise WireError(Reason.NOT_REGISTERED, "send HELLO before CHUNK", c.transfer)
        try:
            ack, whole = self.reasm.accept(peer, c, now, self._id)
        except WireError as err:
            out.append(
                self._send(peer, ChunkAck(self._id(), c.transfer, self.reasm.next_offset(peer, c.transfer)))
            )
            raise WireError(err.reason, err.text, c.transfer) from None
        if ack is not None:
            out.append(self._send(peer, ack))
        if whole is not None:
            self._on_frame(peer, whole, now, out, count=False)  # its bytes were counted as chunks

    def _on_update(self, peer: str, msg: Update, frame: bytes, now: float, out: list[Action]) -> None:
        p = self.peers.get(peer)
        if p is None:
            raise WireError(Reason.NOT_REGISTERED, "send HELLO before UPDATE", msg.id)
        self.admission.check_id(msg, p.agent_id)
        if self._outstanding.get(p.agent_id, ("",))[0] == msg.task_id:
            # answered, whether it is accepted or refused below: the agent is free for a new task
            del self._outstanding[p.agent_id]
        if self.store.is_seen(msg.id):
            self.duplicates += 1
            out.append(Count("updates_duplicate"))
            out.append(self._send(peer, Ack(self._id(), msg.id, duplicate=True)))
            return
        if self.done:
            raise WireError(Reason.STALE, "training is over; no round is open", msg.id)
        staleness = self.version - msg.base_version
        if staleness < 0:
            raise WireError(
                Reason.SCHEMA,
                f"base_version {msg.base_version} is newer than the global v{self.version}",
                msg.id,
            )
        if staleness > self.cfg.max_staleness:
            raise WireError(
                Reason.STALE,
                f"built on v{msg.base_version}, global is v{self.version}, max staleness "
                f"{self.cfg.max_staleness}",
                msg.id,
            )
        why = self.strategy.refusal(staleness)  # e.g. FedBuff's own max staleness
        if why is not None:
            raise WireError(Reason.STALE, why, msg.id)
        task = self._task_of(msg, p.agent_id)
        self.admission.check_update(msg, p.agent_id, task, self.cfg.recipe, p.max_samples)
        if task is not None and task[2] is not None and now > task[2]:
            raise WireError(Reason.STALE, f"task {msg.task_id!r} expired (task_ttl policy)", msg.id)
        if self.store.contributed(p.agent_id, self.round):
            raise WireError(
                Reason.STALE, f"agent {p.agent_id!r} already contributed to round {self.round}", msg.id
            )
        try:
            delta = self._decode(msg)
            check_against_model(delta, self._spec_in, require_all=not self.strategy.partial_ok)
        except WireError as err:
            raise WireError(err.reason, err.text, msg.id) from None
        norm = self.admission.check_delta(msg, self._model_part(delta))
        self._accept(peer, p.agent_id, msg, frame, delta, norm, staleness, now, out)

    def _accept(
        self,
        peer: str,
        agent_id: str,
        msg: Update,
        frame: bytes,
        delta: TensorDict,
        norm: float,
        staleness: int,
        now: float,
        out: list[Action],
        ack_ref: str | None = None,
    ) -> None:
        """Record, fold in and ACK an admitted update (``ack_ref``: the id the ACK names, when it
        is not the update's own, e.g. a station's RELAY), then close the round if it is full."""
        # Durable first, then counted, then ACKed: an ACKed update is never lost. In a batch a large
        # frame is left out of the log: the batch's closing checkpoint, committed with it, holds
        # its contribution instead (one snapshot of the sums instead of N frames on disk).
        frameless = self.store.in_batch and len(frame) >= self._frameless_from
        self._seq = self.store.accept_update(
            msg.id,
            agent_id,
            self.round,
            msg.samples,
            msg.base_version,
            staleness,
            b"" if frameless else frame,
            now,
            size=len(frame),
        )
        self.strategy.accumulate(delta, msg.samples, staleness)
        self.admission.accepted(norm)
        self.accepted += 1
        self._since_ckpt += 1
        self._ckpt_due = self._ckpt_due or frameless
        if self._since_ckpt >= self.cfg.checkpoint_every:
            arrays, scalars = self.strategy.state()
            self.store.save_checkpoint(self.round, self._seq, arrays, scalars)
            self.store.set_meta(NORMS_META, self.admission.dump_norms())
            self._since_ckpt = 0
            self._ckpt_due = False
        out.append(Count("updates_accepted"))
        if msg.payload.get("codec") == COMPACT:
            out.append(Count("updates_compact"))
        out.append(self._send(peer, Ack(self._id(), ack_ref or msg.id)))
        if self.strategy.updates >= self.cfg.min_updates or self.strategy.ready:
            self._close_round(now, out)

    def _on_tick(self, now: float, out: list[Action]) -> None:
        dropped = self.reasm.expire(now, self.cfg.spool_ttl)
        if dropped:
            out.append(
                Log("INFO", f"{dropped} partial upload(s) idle for {self.cfg.spool_ttl:.0f} s dropped")
            )
        self._on_deadline(now, out)
        for (peer, _), ob in list(self.outbound.items()):
            p = self.peers.get(peer)
            if p is not None and p.online and now - ob.last_progress >= self.cfg.retransmit_seconds:
                ob.pause()
                ob.last_progress = now
                self._pump(peer, ob, out)
        self._pump_waiting(out)

    def _on_deadline(self, now: float, out: list[Action]) -> None:
        """Close the round at its deadline, or move the deadline on when it is too thin."""
        if not self.done and self.deadline is not None and now >= self.deadline:
            if self.strategy.updates >= self.cfg.min_updates_at_deadline:
                self._close_round(now, out)
            else:
                self.deadline = now + self.cfg.round_seconds
                self.store.set_deadline(self.round, now, self.deadline)
                out.append(
                    Log(
                        "INFO", f"round {self.round}: deadline with {self.strategy.updates} updates; extended"
                    )
                )

    def _compress_step(self, new: TensorDict, new_version: int) -> TensorDict:
        """Make the next version exactly ``old + decode(encode(new - old + residual))``.

        The ground adopts what the compressed delta decodes to (keeping the part the codec lost as
        a residual for the next round, i.e. error feedback on the server), so an agent holding the
        old version rebuilds the new one bit for bit from the same compressed step.
        """
        recipe = self.cfg.downlink_recipe
        assert recipe is not None
        old = self.global_model
        res = self.store.load_residual(self.version) or {}
        delta = {
            k: np.subtract(new[k], old[k], dtype=np.float32) + res.get(k, np.zeros_like(old[k])) for k in old
        }
        step = encode_payload(recipe, delta, new_codec_state(recipe))
        exact = apply_step(old, step)
        residual = {k: delta[k] - np.subtract(exact[k], old[k], dtype=np.float32) for k in old}
        self.store.save_step(new_version, step, residual)
        return exact

    def _prune(self) -> None:
        """Drop old versions, never one still needed: the open round's base (the newest) and every
        version an agent holds, which its next download is a delta from (``_make_blob``)."""
        assert self.cfg.keep_models is not None
        held = {p.model_version for p in self.peers.values()}
        held |= {a.model_version for a in self.store.agents()}
        protect = {v for v in held if v is not None} | {self.version}
        self.store.prune_models(self.cfg.keep_models, self.cfg.keep_every, protect)

    def _close_round(self, now: float, out: list[Action]) -> None:
        n, samples, nbytes = self.store.round_stats(self.round)
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite result is refused below
            new = self.strategy.finalize(self.global_model)
        figures = self.strategy.report()  # before reset: some are this round's (e.g. staleness)
        self.last_report = figures
        closed = self.round
        new_version = self.version + 1
        why = self.admission.aggregate_refusal(new)
        if why is not None:
            # The round's updates stay counted (they were ACKed) but their aggregate is not used:
            # the next version carries the previous weights unchanged.
            new = {k: np.array(v, copy=True) for k, v in self.global_model.items()}
            out.append(Count("aggregates_refused"))
            out.append(
                Log(
                    "ERROR",
                    f"round {closed}: aggregate refused ({why}); "
                    f"v{new_version} keeps v{self.version}'s weights",
                )
            )
        if self.cfg.downlink_recipe is not None:
            new = self._compress_step(new, new_version)

        last = self.cfg.rounds is not None and self.store.rounds_closed() + 1 >= self.cfg.rounds
        next_round = None if last else closed + 1
        next_deadline = None if last else now + self.cfg.round_seconds
        self.store.set_meta(NORMS_META, self.admission.dump_norms())
        if self.strategy.carries and next_round is not None:
            # State kept across rounds (server moments, DP's round count) is checkpointed for the
            # next round before this one closes: a crash in between recloses this round to the
            # same result, and a crash after finds the next round's checkpoint.
            self.strategy.reset(new)
            arrays, scalars = self.strategy.state()
            self.store.save_checkpoint(next_round, 0, arrays, scalars)
        self.store.close_round(closed, new_version, new, now, next_round, next_deadline)
        self.version = new_version
        if self.cfg.keep_models is not None:
            self._prune()
        self.global_model = self.store.load_model(new_version) or new
        self.admission.set_model(self.global_model)
        self.round = next_round or closed
        self.deadline = next_deadline
        self.strategy.reset(self.global_model)
        self._since_ckpt = 0
        self._seq = 0
        self._ckpt_due = False  # the closed round's rows are folded into the model file
        out.append(RoundClosed(closed, new_version, n, samples, nbytes))
        out.append(Gauge("model_version", new_version))
        out.append(Gauge("round", self.round))
        for key, value in figures.items():
            out.append(Gauge(f"strategy_{key}", value))
        if figures:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in figures.items())
            out.append(Log("INFO", f"round {closed}: {self.strategy.name}: {shown}"))
        if last:
            out.append(Gauge("federation_finished", 1))
            out.append(
                Log(
                    "INFO",
                    f"federation finished: {self.store.rounds_closed()} rounds, final model v{new_version}; "
                    f"agents get it as they call in (raise federation.rounds to continue)",
                )
            )
        for peer, p in self.peers.items():
            if p.online and not self._still_training(p.agent_id, now):
                self._offer_task(peer, p, now, out)

    def _still_training(self, agent_id: str, now: float) -> bool:
        """Under an asynchronous strategy (FedBuff, EMS-FL), an agent that holds a task it has not
        answered yet is left to finish: its update counts, stale, in a later round. Handing it the
        next task instead would make it drop that work, so a board slower than the rest would
        never contribute. (Its HELLO after a reconnect still gets a task, and so does an agent
        whose task outlived ``task_ttl``, so one that lost its job is not left idle.)"""
        if not self.strategy.asynchronous:
            return False
        issued = self._outstanding.get(agent_id)
        if issued is None:
            return False
        return self.cfg.task_ttl is None or now - issued[1] < self.cfg.task_ttl

    @staticmethod
    def _round_task_id(round_: int, agent: str) -> str:
        return task_id_for(round_, agent)  # the UPDATE leaves it out when it is this
