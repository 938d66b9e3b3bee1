"""The agent's federation logic as a state machine: events in, actions out, no sockets, no clock.

On every link up the agent says HELLO (with the model version it holds) and resumes uploading the
oldest update in its outbox from the offset the ground last confirmed. A TASK (with the model whole
or as a delta when the agent does not hold its version) becomes a StartTraining action; the
trainer's TrainingDone becomes an encoded UPDATE, stored durably in the outbox before any attempt to
send it; an ACK removes it. Link loss pauses transfers; nothing is dropped because time passed.

A TrainingDone's ``budget_bytes`` and ``curvature`` go to the codec (adaptive LAQ sizes the update
to the budget). When they are missing for a recipe that needs them, or are bad (budget <= 0,
curvature of other names or shapes, non-finite or <= 0), the machine refuses the update: it drops
the task with an ERROR log and Count("updates_not_encoded"), and the ground's deadline reassigns
the work. It does not fall back to another recipe: the ground chose the recipe for the round and
an unasked-for codec (or an update over the window's budget) would only be refused or stall there.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from orbitfl import __version__
from orbitfl.runtime.events import (
    GROUND,
    Action,
    ApplyModel,
    Count,
    Event,
    LinkDown,
    LinkUp,
    Log,
    MessageReceived,
    Send,
    StartTraining,
    Tick,
    TrainingDone,
    TrainingFailed,
)
from orbitfl.runtime.outbox import Outbox
from orbitfl.runtime.uplink import Uploader
from orbitfl.transfer import DEFAULT_CHUNK_BYTES, DEFAULT_WINDOW, Reassembler
from orbitfl.wire.compact import FORM as COMPACT_FORM
from orbitfl.wire.compact import Layout, compact_payload, recipe_id
from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import (
    DEFAULT_LIMITS,
    Ack,
    Bye,
    Chunk,
    ChunkAck,
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
    make_id,
    peek_id,
)
from orbitfl.wire.model_codec import decode_model
from orbitfl.wire.payload import codec_state_from_dict, codec_state_to_dict, encode_payload, new_codec_state
from orbitfl.wire.tensors import TensorDict

UNSYNCED_RETRY_S = 2.0  # after a station's unsynced / not_allowed, HELLO again this much later

# The ground will refuse these again on a resend: drop the update instead of retrying forever.
PERMANENT = frozenset(
    r.value
    for r in (
        Reason.STALE,
        Reason.SCHEMA,
        Reason.BAD_ID,
        Reason.UNKNOWN_TENSOR,
        Reason.MISSING_TENSOR,
        Reason.BAD_DTYPE,
        Reason.BAD_SHAPE,
        Reason.NON_FINITE,
        Reason.BAD_PAYLOAD,
        Reason.OVERSIZE,
        Reason.UNKNOWN_TASK,
        Reason.UNKNOWN_TYPE,
        Reason.BAD_VERSION,
        Reason.MALFORMED,
        Reason.NORM_BOUND,
    )
)


@dataclass
class AgentConfig:
    agent_id: str
    software: str = f"orbitfl/{__version__}"
    capabilities: dict[str, Any] = field(default_factory=dict)
    # Idle this long, the agent tells the ground what changed (a HEARTBEAT with its model version),
    # and only then: on a radio every idle byte is taken from updates, and liveness is the link's
    # own (ZeroMQ heartbeats, or the contact window). keepalive_seconds bounds how stale the
    # ground's view of a continuously linked agent (a UAV on a mesh) may grow; None: never resend.
    heartbeat_seconds: float = 15.0
    keepalive_seconds: float | None = 600.0
    retransmit_seconds: float = 30.0
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    window: int = DEFAULT_WINDOW
    max_transfer_bytes: int = 512 << 20
    limits: Limits = DEFAULT_LIMITS
    # orbitfl.models.zoo.fingerprint of the model this agent trains (None: not checked). Sent in
    # HELLO; a TASK for another model is refused. After a model_mismatch the agent stays quiet
    # (keeping its outbox) for mismatch_backoff_seconds, doubling up to an hour, then asks again.
    model_fingerprint: str | None = None
    mismatch_backoff_seconds: float = 60.0
    # After the first full HELLO of a boot, send the short form (its digest); a ground that does
    # not hold it refuses with not_registered and gets the full one. False: always the full form.
    short_hello: bool = True

    def __post_init__(self) -> None:
        if not self.agent_id or ":" in self.agent_id or len(self.agent_id) > 128:
            raise ValueError(f"agent_id must be 1-128 chars without ':', got {self.agent_id!r}")
        if self.heartbeat_seconds <= 0 or self.retransmit_seconds <= 0:
            raise ValueError("heartbeat_seconds and retransmit_seconds must be > 0")
        if self.keepalive_seconds is not None and self.keepalive_seconds < self.heartbeat_seconds:
            raise ValueError(
                f"keepalive_seconds ({self.keepalive_seconds}) must be >= heartbeat_seconds "
                f"({self.heartbeat_seconds}), or None"
            )


class AgentMachine:
    """One agent's federation state. Single-threaded: call ``handle`` from one thread."""

    def __init__(self, outbox: Outbox, config: AgentConfig) -> None:
        self.outbox = outbox
        self.cfg = config
        self._boot = outbox.next_boot()
        self._ids = itertools.count(1)
        held = outbox.load_model()
        self.version: int | None = None if held is None else held[0]
        self.weights: TensorDict = {} if held is None else held[1]
        self.task: Task | None = None  # the task being trained
        self.training = False
        self.linked = False
        self.uploader = Uploader(outbox, config, self._id)
        self.reasm = Reassembler(config.max_transfer_bytes, max_transfers_per_peer=2)
        self.codec_state: dict[str, Any] = {}  # recipe -> codec state (error feedback), kept in the outbox
        self._layout: tuple[int | None, Layout] | None = None  # the held model's, by version
        self._last_sent = 0.0
        self._told: int | None = None  # the model version the ground last heard from us, and when
        self._told_at: float | None = None
        self.refused: dict[str, int] = {}
        self.bytes_out = 0
        self.quiet_until: float | None = None  # set while the ground and we disagree on the model
        self._quiet_s = config.mismatch_backoff_seconds
        self._full_hello_sent = False
        self._short_hello_id: str | None = None  # the last short HELLO, to know its refusal

    def _id(self) -> str:
        return f"{self.cfg.agent_id}:b{self._boot}.{next(self._ids)}"

    def _send(self, msg: Message | bytes, now: float, out: list[Action]) -> None:
        frame = msg if isinstance(msg, bytes) else encode(msg)
        self.bytes_out += len(frame)
        self.uploader.spent(len(frame))
        self._last_sent = now
        out.append(Send(GROUND, frame))

    # --- the machine ------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, LinkUp):
            self.linked = True
            self.uploader.link_up(event.budget_bytes)
            if self.quiet_until is None or now >= self.quiet_until:
                self.quiet_until = None
                self._hello(now, out)
                self._start_upload(now, out, resume=True)
        elif isinstance(event, LinkDown):
            self.linked = False
            self.uploader.pause()
        elif isinstance(event, MessageReceived):
            self._on_frame(event.frame, now, out)
        elif isinstance(event, TrainingDone):
            self._on_trained(event, now, out)
        elif isinstance(event, TrainingFailed):
            if self.task is not None and self.task.task_id == event.task_id:
                self.task, self.training = None, False
            out.append(Log("ERROR", f"training of {event.task_id!r} failed: {event.error}"))
            out.append(Count("training_failed"))
        elif isinstance(event, Tick):
            self._on_tick(now, out)
        return out

    def _hello(self, now: float, out: list[Action]) -> None:
        hello = Hello(
            self._id(),
            self.cfg.agent_id,
            self.cfg.software,
            self.version,
            {**self.cfg.capabilities, "pending": self.outbox.pending()},
            self.cfg.model_fingerprint,
        )
        if self.cfg.short_hello and self._full_hello_sent:
            hello = hello.short()
            self._short_hello_id = hello.id
        else:
            self._full_hello_sent = True
        self._send(hello, now, out)
        self._told, self._told_at = self.version, now

    def _heartbeat(self, now: float, out: list[Action]) -> None:
        self._send(Heartbeat(self._id(), self.version, self.outbox.pending()), now, out)
        self._told, self._told_at = self.version, now

    def _go_quiet(self, why: str, now: float, out: list[Action]) -> None:
        """Stop asking for work the other side's model makes useless; ask again later."""
        self.quiet_until = now + self._quiet_s
        self._full_hello_sent = False  # the next HELLO is the full one the ground refused
        out.append(Count("model_mismatch"))
        out.append(
            Log(
                "ERROR",
                f"model mismatch: {why}; not asking the ground again for {self._quiet_s:.0f} s "
                f"({self.outbox.pending()} update(s) kept in the outbox)",
            )
        )
        self._quiet_s = min(self._quiet_s * 2, 3600.0)
        self.task, self.training = None, False
        self.uploader.pause()

    def _on_tick(self, now: float, out: list[Action]) -> None:
        if not self.linked:
            return
        if self.quiet_until is not None:
            if now < self.quiet_until:
                return
            self.quiet_until = None
            self._hello(now, out)
            self._start_upload(now, out, resume=True)
            return
        if self.uploader.due(now, self.cfg.retransmit_seconds):
            out.append(Count("retransmits"))
            self._start_upload(now, out, resume=True)
        elif now - self._last_sent >= self.cfg.heartbeat_seconds:
            keep = self.cfg.keepalive_seconds
            told = self._told_at
            if told is None or self._told != self.version or (keep is not None and now - told >= keep):
                self._heartbeat(now, out)

    def _on_frame(self, frame: bytes, now: float, out: list[Action]) -> None:
        try:
            msg = decode(frame, self.cfg.limits)
            if isinstance(msg, Task):
                self._with_ref(msg.id, lambda: self._on_task(msg, now, out))
            elif isinstance(msg, Model):
                assert msg.model is not None
                model = msg.model
                self._with_ref(msg.id, lambda: self._install(model, now, out))
            elif isinstance(msg, Ack):
                self._on_ack(msg.ref, msg.duplicate, now, out)
            elif isinstance(msg, Nack):
                self._on_nack(msg, now, out)
            elif isinstance(msg, Chunk):
                try:
                    ack, whole = self.reasm.accept(GROUND, msg, now, self._id)
                except WireError as err:
                    self._send(
                        ChunkAck(self._id(), msg.transfer, self.reasm.next_offset(GROUND, msg.transfer)),
                        now,
                        out,
                    )
                    raise WireError(err.reason, err.text, msg.transfer) from None
                if ack is not None:
                    self._send(ack, now, out)
                if whole is not None:
                    self._on_frame(whole, now, out)
            elif isinstance(msg, ChunkAck):
                for f in self.uploader.on_chunk_ack(msg, now, self.linked):
                    self._send(f, now, out)
            elif isinstance(msg, (Heartbeat, Bye)):
                pass
            else:
                raise WireError(Reason.UNKNOWN_TYPE, f"{msg.TYPE} is not something the ground sends", msg.id)
        except WireError as err:
            self.refused[err.reason.value] = self.refused.get(err.reason.value, 0) + 1
            out.append(Count("refused", (("reason", err.reason.value),)))
            out.append(Log("WARNING", f"refused frame from ground (id {err.ref!r}): {err}", err.reason.value))
            if self.linked:
                self._send(Nack(self._id(), err.ref, err.reason.value, err.text), now, out)
        except Exception as exc:  # a frame the checks missed costs that frame, never the outbox
            self.refused[Reason.INTERNAL.value] = self.refused.get(Reason.INTERNAL.value, 0) + 1
            out.append(Count("refused", (("reason", Reason.INTERNAL.value),)))
            out.append(Log("ERROR", f"internal error on a frame from ground: {type(exc).__name__}: {exc}"))
            if self.linked:
                self._send(
                    Nack(self._id(), peek_id(frame), Reason.INTERNAL.value, type(exc).__name__), now, out
                )

    @staticmethod
    def _with_ref(ref: str, step: Callable[[], object]) -> None:
        """Run ``step``; a refusal inside it names ``ref`` so the ground knows what was refused."""
        try:
            step()
        except WireError as err:
            raise WireError(err.reason, err.text, err.ref or ref) from None

    def _install(self, blob: ModelBlob, now: float, out: list[Action]) -> bool:
        """Rebuild, verify and durably keep a global model; tell the service to use it."""
        if blob.version == self.version:
            return True
        if blob.encoding in ("xor", "codec") and blob.base_version != self.version:
            raise WireError(
                Reason.BAD_PAYLOAD,
                f"model v{blob.version} is a delta from v{blob.base_version}; "
                f"this agent holds v{self.version}",
            )
        weights = decode_model(blob, None if blob.encoding == "full" else self.weights)
        self.outbox.save_model(blob.version, weights)
        self.version, self.weights = blob.version, weights
        out.append(ApplyModel(blob.version, weights))
        out.append(Log("INFO", f"holding global model v{blob.version}"))
        if self.linked:  # let the ground know which version to send deltas against
            self._heartbeat(now, out)
        return True

    def _on_task(self, task: Task, now: float, out: list[Action]) -> None:
        mine = self.cfg.model_fingerprint
        if mine is not None and task.model_fingerprint is not None and task.model_fingerprint != mine:
            text = (
                f"task {task.task_id!r} is for model {task.model_fingerprint}, but this agent trains "
                f"model {mine}: set train.model to the ground's federation.model"
            )
            self._go_quiet(text, now, out)
            self._send(Nack(self._id(), task.id, Reason.MODEL_MISMATCH.value, text), now, out)
            return
        if (self.task is not None and self.task.task_id == task.task_id) or self.outbox.has_task(
            task.task_id
        ):
            return  # a resend of work in hand
        if task.model is not None:
            self._install(task.model, now, out)
        if task.model_version != self.version:
            raise WireError(
                Reason.BAD_PAYLOAD,
                f"task {task.task_id!r} needs model v{task.model_version}; this agent holds v{self.version}",
                task.id,
            )
        if self.training:
            out.append(
                Log("INFO", f"task {task.task_id!r} replaces unfinished {self.task and self.task.task_id!r}")
            )
        self.task, self.training = task, True
        out.append(Count("tasks_started"))
        out.append(StartTraining(task, self.weights))

    def _on_trained(self, ev: TrainingDone, now: float, out: list[Action]) -> None:
        task = self.task
        if task is None or task.task_id != ev.task_id:
            out.append(
                Log("WARNING", f"training result for {ev.task_id!r} is not for the current task; ignored")
            )
            return
        try:
            state = self._codec_state(task.recipe, out)
            payload = encode_payload(
                task.recipe, ev.delta, state, curvature=ev.curvature, budget_bytes=ev.budget_bytes
            )
        except (ValueError, TypeError, WireError) as exc:
            self.task, self.training = None, False
            out.append(Count("updates_not_encoded", (("recipe", task.recipe),)))
            out.append(
                Log("ERROR", f"cannot encode the update of {task.task_id!r} with {task.recipe!r}: {exc}")
            )
            return
        payload = self._compact(task, payload, out)

        def frame(counter: int) -> tuple[str, bytes]:
            uid = make_id(self.cfg.agent_id, counter)
            return uid, encode(
                Update(
                    uid,
                    task.task_id,
                    task.round,
                    task.model_version,
                    ev.samples,
                    dict(ev.metrics),
                    payload,
                    omit_task_id=task.compact is not None and task.compact.form >= 2,
                )
            )

        kv = {}
        if state is not None:
            kv[f"codec_state/{task.recipe}"] = msgpack.packb(codec_state_to_dict(state), use_bin_type=True)
        uid = self.outbox.put(task.task_id, frame, now, kv)
        self.task, self.training = None, False
        out.append(Count("updates_queued"))
        out.append(Log("INFO", f"update {uid} for {task.task_id!r} is in the outbox"))
        if self.uploader.upload_id is None:
            self._start_upload(now, out, resume=False)

    def _compact(self, task: Task, full: dict[str, Any], out: list[Action]) -> dict[str, Any]:
        """The update's payload in the compact form when the task offers it for the recipe and the
        model this agent holds (same ids), else as encoded."""
        offer = task.compact
        if offer is None:
            return full
        if self._layout is None or self._layout[0] != self.version:
            self._layout = (self.version, Layout.of_tensors(self.weights))
        layout = self._layout[1]
        if offer.recipe_id != recipe_id(task.recipe) or offer.layout_id != layout.id:
            out.append(Count("compact_declined"))
            out.append(
                Log(
                    "WARNING",
                    f"task {task.task_id!r} offers the compact form for recipe {offer.recipe_id.hex()} and "
                    f"layout {offer.layout_id.hex()}; this agent has {recipe_id(task.recipe).hex()} and "
                    f"{layout.id.hex()}: sending the full form",
                )
            )
            return full
        compact = compact_payload(full, task.recipe, layout, min(offer.form, COMPACT_FORM))
        return full if compact is None else compact

    def _codec_state(self, recipe: str, out: list[Action]) -> Any:
        """The codec state of ``recipe``: in memory, else as stored with the last update, else new."""
        if recipe in self.codec_state:
            return self.codec_state[recipe]
        state = new_codec_state(recipe)
        blob = self.outbox.get(f"codec_state/{recipe}")
        if state is not None and blob is not None:
            try:
                state = codec_state_from_dict(msgpack.unpackb(blob, raw=False, max_ext_len=0))
            except (ValueError, TypeError) as exc:
                out.append(
                    Log("WARNING", f"stored codec state of {recipe!r} unreadable ({exc}); starting fresh")
                )
        self.codec_state[recipe] = state
        return state

    def _start_upload(self, now: float, out: list[Action], resume: bool) -> None:
        """Send (or resume sending) the outbox head (orbitfl.runtime.uplink)."""
        if not self.linked or self.quiet_until is not None:
            return
        for f in self.uploader.start(now):
            self._send(f, now, out)

    def _on_ack(self, ref: str, duplicate: bool, now: float, out: list[Action]) -> None:
        held, frames = self.uploader.on_ack(ref, now, self.linked and self.quiet_until is None)
        if held:
            out.append(Count("updates_acked"))
            out.append(Log("INFO", f"update {ref} acknowledged{' (duplicate)' if duplicate else ''}"))
        for f in frames:
            self._send(f, now, out)

    def _on_nack(self, msg: Nack, now: float, out: list[Action]) -> None:
        out.append(Count("nacks_received", (("reason", msg.reason),)))
        out.append(Log("WARNING", f"ground refused {msg.ref!r}: {msg.reason}: {msg.text}"))
        if msg.reason == Reason.MODEL_MISMATCH.value:
            self._go_quiet(f"the ground refused this agent: {msg.text}", now, out)
            return
        if (
            msg.reason == Reason.NOT_REGISTERED.value
            and msg.ref is not None
            and msg.ref == self._short_hello_id
        ):
            # The ground does not hold what our short HELLO stands for (it restarted, or it is
            # another station): tell it in full.
            self._short_hello_id, self._full_hello_sent = None, False
            if self.quiet_until is None:
                self._hello(now, out)
                self._start_upload(now, out, resume=True)
            return
        if msg.reason in (Reason.UNSYNCED.value, Reason.NOT_ALLOWED.value):
            # A ground-network station not ready for us yet: say HELLO again in a while.
            self.quiet_until = now + UNSYNCED_RETRY_S
            return
        if msg.ref is None or msg.ref != self.uploader.upload_id:
            return
        if self.quiet_until is not None:
            return
        if msg.reason == Reason.NOT_REGISTERED.value:
            self._hello(now, out)
            self._start_upload(now, out, resume=True)
            return
        if msg.reason in PERMANENT:
            out.append(Count("updates_dropped", (("reason", msg.reason),)))
        for f in self.uploader.on_nack(msg.ref, msg.reason, PERMANENT, now, self.linked):
            self._send(f, now, out)
