"""A ground station of a ground network: serves agents as the ground does, relays to the aggregator.

``orbitfl ground serve --role station``. Towards agents a station is the ground machine itself
(HELLO, TASK, MODEL, UPDATE, CHUNK with the same admission checks, orbitfl.ground.admission), except
that an admitted update is not folded into a round here: it goes into the station's outbox
(orbitfl.runtime.outbox, fsynced) as a RELAY, the agent gets its ACK after that commit, and the
outbox is sent to the aggregator over the station's own store-and-forward link
(orbitfl.runtime.uplink: in order, chunked, resumed, until the aggregator ACKs it). Towards the
aggregator a station is a client like an agent: HELLO on every link up (the model version and
allow-list it holds), then STATE (the round, its recipe, the model) and ALLOW (the federation's
agent allow-list) come down and are kept in the station's store, so it serves agents while the
aggregator is out of reach.

A station that has never synced has no model and no allow-list: it refuses agents (UNSYNCED, which
agents retry) until the first STATE arrives. An agent not in the allow-list is refused
(NOT_ALLOWED) and a revoked one is forgotten, in addition to the link's own key check.

No sockets, no clock: the daemon (orbitfl.ground.daemon) and the simulator drive it alike.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orbitfl import __version__
from orbitfl.ground.aggregator import ALLOW_CAP, allow_version
from orbitfl.ground.machine import GroundConfig, GroundMachine, _Peer
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import (
    Action,
    AllowAgents,
    Count,
    Event,
    Gauge,
    Log,
    MessageReceived,
    PeerSilent,
    Send,
    SendUpstream,
    Tick,
    UpstreamDown,
    UpstreamReceived,
    UpstreamUp,
)
from orbitfl.runtime.outbox import Outbox
from orbitfl.runtime.uplink import Uploader
from orbitfl.transfer import Reassembler
from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import (
    Ack,
    Allow,
    Bye,
    Chunk,
    ChunkAck,
    Heartbeat,
    Hello,
    Message,
    Nack,
    Relay,
    State,
    Update,
    decode,
    encode,
    make_id,
    peek_id,
)
from orbitfl.wire.model_codec import decode_model
from orbitfl.wire.tensors import TensorDict

STATE_META = "station.state"  # the last STATE's fields (JSON), so a restart serves the same round
ALLOW_META = "station.allow"  # the last ALLOW (JSON: version, keys)

# The aggregator will refuse these again on a resend: drop the relay (kept, with its reason, in the
# outbox's dropped table for the audit) instead of retrying forever.
RELAY_PERMANENT = frozenset(
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
        Reason.UNKNOWN_TYPE,
        Reason.BAD_VERSION,
        Reason.MALFORMED,
    )
)


@dataclass
class StationConfig:
    """``ground``: the agents' side, as for a single ground (its ground_id is the station's name).
    The federation's own settings (rounds, recipe, staleness bound, model) come from the aggregator
    in STATE and override the ones in ``ground``."""

    station_id: str
    ground: GroundConfig
    heartbeat_seconds: float = 5.0
    retransmit_seconds: float = 30.0
    software: str = f"orbitfl/{__version__}"

    def __post_init__(self) -> None:
        if not self.station_id or ":" in self.station_id or len(self.station_id) > 128:
            raise ValueError(f"station_id must be 1-128 chars without ':', got {self.station_id!r}")
        if self.heartbeat_seconds <= 0 or self.retransmit_seconds <= 0:
            raise ValueError("heartbeat_seconds and retransmit_seconds must be > 0")
        self.ground.ground_id = self.station_id


class _AgentSide(GroundMachine):
    """The station's agent-facing half: the ground machine with the round's fold replaced by a
    relay, and the round's course (deadline, closing) taken from the aggregator."""

    def __init__(self, store: GroundStore, config: GroundConfig, station: StationMachine) -> None:
        self._station = station
        self._finished = False
        super().__init__(store, config)

    @property
    def done(self) -> bool:
        return self._finished

    def _recover(self) -> None:
        # No sums to rebuild (nothing is folded here): the round served and the agents known.
        cur = self.store.current_round()
        self.round = cur.round if cur is not None else 0
        self.deadline = cur.deadline if cur is not None else None
        self._since_ckpt, self._seq, self._ckpt_due = 0, 0, False
        for aid in (a.agent_id for a in self.store.agents()):
            row = self.store.agent(aid)
            assert row is not None
            self.peers.setdefault(
                row.peer, _Peer(aid, online=False, model_version=row.model_version, last_seen=row.last_seen)
            )

    def _continue_finished(self) -> None:
        pass  # the aggregator decides when the federation goes on

    def _on_deadline(self, now: float, out: list[Action]) -> None:
        pass  # rounds close at the aggregator

    def _on_hello(self, peer: str, msg: Hello, now: float, out: list[Action]) -> None:
        allowed = self._station.allowed
        if allowed is not None and msg.agent_id not in allowed:
            raise WireError(
                Reason.NOT_ALLOWED, f"agent {msg.agent_id!r} is not in the federation's allow-list", msg.id
            )
        super()._on_hello(peer, msg, now, out)

    def _task_of(self, msg: Update, agent_id: str) -> tuple[str, int, float | None] | None:
        # A task another station gave (the agent moved on between passes): task ids name their
        # round and agent, so it is known without having been issued here.
        task = self.store.task(msg.task_id)
        if task is None and msg.task_id == self._round_task_id(msg.round, agent_id):
            return agent_id, msg.round, None
        return task

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
        station = self._station
        rid = station.outbox.put(
            msg.id,
            lambda counter: (
                (i := make_id(station.cfg.station_id, counter)),
                encode(Relay(i, agent_id, frame)),
            ),
            now,
        )
        # Also seen here (without the frame: the outbox holds it), so a resend of the same update
        # to this station is ACKed as a duplicate instead of relayed twice.
        self.store.accept_update(
            msg.id, agent_id, self.round, msg.samples, msg.base_version, staleness, b"", now, size=len(frame)
        )
        self.admission.accepted(norm)
        self.accepted += 1
        out.append(Count("updates_accepted"))
        out.append(Log("INFO", f"update {msg.id} of {agent_id!r} stored as {rid} for the aggregator"))
        out.append(self._send(peer, Ack(self._id(), msg.id)))
        station.relay_queued(now, out)

    def install(
        self, st: State, weights: TensorDict | None, now: float, out: list[Action], restore: bool = False
    ) -> None:
        """Serve what the aggregator sent: a new version (``weights``) and the round's settings.
        ``restore``: the STATE kept in the store, at a restart (the stored deadline stays)."""
        cfg = self.cfg
        cfg.recipe, cfg.max_staleness, cfg.hints = st.recipe, st.max_staleness, dict(st.hints)
        cfg.model_fingerprint = st.model_fingerprint
        # The recipe comes from the aggregator, not this station's config: compact updates name it
        # by id, so it joins the recipes this side can resolve (kept in the store for restarts).
        self.recipes = self._known_recipes()
        self._finished = st.done
        if restore:
            return
        deadline = None if st.deadline_in is None else now + st.deadline_in
        moved = weights is not None and st.model_version != self.version
        if weights is not None and moved:
            self.store.close_round(
                self.round, st.model_version, weights, now, None if st.done else st.round, deadline
            )
            self.version, self.global_model = st.model_version, weights
            self.admission.set_model(weights)
            if cfg.keep_models is not None:
                self._prune()
        elif not st.done and st.round != self.round:
            self.store.open_round(st.round, self.version, now, deadline)
        self.round, self.deadline, self._finished = st.round, deadline, st.done
        if moved or st.done:
            for peer, p in self.peers.items():
                if p.online:
                    self._offer_task(peer, p, now, out)

    def forget(self, names: set[str]) -> None:
        """Revoked agents: their open connections no longer count as registered."""
        for peer in [k for k, p in self.peers.items() if p.agent_id in names]:
            del self.peers[peer]
            for key in [k for k in self.outbound if k[0] == peer]:
                del self.outbound[key]


def _state_fields(st: State) -> dict[str, Any]:
    d = st.to_wire()
    d.pop("model", None)
    return d


class StationMachine:
    """One station's state. Single-threaded: call ``handle`` from one thread.

    Events: MessageReceived / PeerSilent from agents (peer = the agent's link name), Tick, and
    UpstreamUp / UpstreamDown / UpstreamReceived for the link to the aggregator. Actions: Send (to
    agents), SendUpstream, AllowAgents (install this allow-list in the link), Log, Count, Gauge.
    """

    def __init__(self, store: GroundStore, outbox: Outbox, config: StationConfig) -> None:
        self.store = store
        self.outbox = outbox
        self.cfg = config
        self._boot = outbox.next_boot()
        self._ids = itertools.count(1)
        self.uploader = Uploader(outbox, config.ground, self._id)
        self.reasm = Reassembler(config.ground.max_transfer_bytes, max_transfers_per_peer=2)
        self.linked = False
        self._last_sent = 0.0
        self.relayed = 0
        allow = store.get_meta(ALLOW_META)
        self.allow_version = ""
        self.allowed: dict[str, str] | None = {}  # none known yet: nobody is admitted
        if allow is not None:
            d = json.loads(allow)
            self.allow_version, self.allowed = str(d["version"]), d["keys"]
        self.agents: _AgentSide | None = None
        if store.latest_version() is not None:
            self.agents = _AgentSide(store, config.ground, self)
            raw = store.get_meta(STATE_META)
            if raw is not None:
                st = State.from_fields("restored", json.loads(raw))
                self.agents.install(st, None, 0.0, [], restore=True)

    def _id(self) -> str:
        return f"{self.cfg.station_id}:b{self._boot}.{next(self._ids)}"

    @property
    def synced(self) -> bool:
        return self.agents is not None

    @property
    def version(self) -> int | None:
        return None if self.agents is None else self.agents.version

    def backlog(self) -> int:
        """Updates ACKed to agents and not yet ACKed by the aggregator."""
        return self.outbox.pending()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit of the agents' side (see GroundMachine.batch): execute the returned actions
        after the block. The relays themselves are in the outbox, committed one by one."""
        if self.agents is None:
            with self.store.batch():
                yield
        else:
            with self.agents.batch():
                yield

    # --- events -----------------------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, UpstreamUp):
            self.linked = True
            self._hello(now, out)
            self._send_up(self.uploader.start(now), now, out)
        elif isinstance(event, UpstreamDown):
            self.linked = False
            self.uploader.pause()
        elif isinstance(event, UpstreamReceived):
            self._on_upstream(event.frame, now, out)
        elif isinstance(event, MessageReceived):
            if self.agents is None or not self.allow_version:
                text = "this station has no model or allow-list from the aggregator yet; try again later"
                self._refuse(event.peer, event.frame, Reason.UNSYNCED, text, out)
            elif self.allowed is not None and event.peer not in self.allowed:
                text = "not in the federation's allow-list"
                self._refuse(event.peer, event.frame, Reason.NOT_ALLOWED, text, out)
            else:
                out += self.agents.handle(event, now)
        elif isinstance(event, PeerSilent):
            if self.agents is not None:
                out += self.agents.handle(event, now)
        elif isinstance(event, Tick):
            if self.agents is not None:
                out += self.agents.handle(event, now)
            self._on_tick(now, out)
        return out

    def _refuse(self, peer: str, frame: bytes, reason: Reason, text: str, out: list[Action]) -> None:
        """Refuse every frame of ``peer`` (not a NOT_REGISTERED, which would make it HELLO again)."""
        out.append(Count("refused", (("reason", reason.value),)))
        out.append(Log("WARNING", f"refused a frame from {peer!r}: {text}", f"{peer}:{reason.value}"))
        out.append(Send(peer, encode(Nack(self._id(), peek_id(frame), reason.value, text))))

    def _on_tick(self, now: float, out: list[Action]) -> None:
        out.append(Gauge("forward_backlog", self.outbox.pending()))
        if not self.linked:
            return
        if self.uploader.due(now, self.cfg.retransmit_seconds):
            out.append(Count("relay_retransmits"))
            self._send_up(self.uploader.start(now), now, out)
        elif now - self._last_sent >= self.cfg.heartbeat_seconds:
            self._send_up([encode(Heartbeat(self._id(), self.version, self.outbox.pending()))], now, out)

    def _send_up(self, frames: list[bytes], now: float, out: list[Action]) -> None:
        if frames:
            self._last_sent = now
        out.extend(SendUpstream(f) for f in frames)

    def _hello(self, now: float, out: list[Action]) -> None:
        caps = {"role": "station", ALLOW_CAP: self.allow_version, "pending": self.outbox.pending()}
        hello = Hello(self._id(), self.cfg.station_id, self.cfg.software, self.version, caps)
        self._send_up([encode(hello)], now, out)

    def relay_queued(self, now: float, out: list[Action]) -> None:
        """An update entered the outbox: send it now if the link is up and nothing is in flight."""
        out.append(Gauge("forward_backlog", self.outbox.pending()))
        if self.linked and self.uploader.upload_id is None:
            self._send_up(self.uploader.start(now), now, out)

    # --- from the aggregator ----------------------------------------------------------------------

    def _on_upstream(self, frame: bytes, now: float, out: list[Action]) -> None:
        try:
            msg = decode(frame, self.cfg.ground.limits)
            self._on_message(msg, now, out)
        except WireError as err:
            out.append(Count("refused", (("reason", err.reason.value),)))
            out.append(Log("WARNING", f"refused frame from the aggregator: {err}", f"up:{err.reason.value}"))
            if self.linked:
                self._send_up([encode(Nack(self._id(), err.ref, err.reason.value, err.text))], now, out)
        except Exception as exc:  # a frame the checks missed costs that frame, never the outbox
            out.append(Count("refused", (("reason", Reason.INTERNAL.value),)))
            out.append(
                Log("ERROR", f"internal error on a frame from the aggregator: {type(exc).__name__}: {exc}")
            )

    def _on_message(self, msg: Message, now: float, out: list[Action]) -> None:
        if isinstance(msg, State):
            try:
                self._on_state(msg, now, out)
            except WireError as err:
                raise WireError(err.reason, err.text, err.ref or msg.id) from None
        elif isinstance(msg, Allow):
            self._on_allow(msg, out)
        elif isinstance(msg, Ack):
            held, frames = self.uploader.on_ack(msg.ref, now, self.linked)
            if held:
                self.relayed += 1
                out.append(Count("relays_acked", (("duplicate", str(msg.duplicate).lower()),)))
                out.append(Gauge("forward_backlog", self.outbox.pending()))
            self._send_up(frames, now, out)
        elif isinstance(msg, Nack):
            self._on_nack(msg, now, out)
        elif isinstance(msg, Chunk):
            try:
                ack, whole = self.reasm.accept("up", msg, now, self._id)
            except WireError as err:
                nxt = self.reasm.next_offset("up", msg.transfer)
                self._send_up([encode(ChunkAck(self._id(), msg.transfer, nxt))], now, out)
                raise WireError(err.reason, err.text, msg.transfer) from None
            if ack is not None:
                self._send_up([ack], now, out)
            if whole is not None:
                self._on_message(decode(whole, self.cfg.ground.limits), now, out)
        elif isinstance(msg, ChunkAck):
            self._send_up(self.uploader.on_chunk_ack(msg, now, self.linked), now, out)
        elif isinstance(msg, (Heartbeat, Bye)):
            pass
        else:
            raise WireError(Reason.UNKNOWN_TYPE, f"{msg.TYPE} is not something the aggregator sends", msg.id)

    def _on_nack(self, msg: Nack, now: float, out: list[Action]) -> None:
        out.append(Count("nacks_received", (("reason", msg.reason),)))
        out.append(
            Log("WARNING", f"aggregator refused {msg.ref!r}: {msg.reason}: {msg.text}", f"up:{msg.reason}")
        )
        if msg.reason == Reason.NOT_REGISTERED.value:
            self._hello(now, out)
            self._send_up(self.uploader.start(now), now, out)
            return
        if msg.reason in RELAY_PERMANENT and msg.ref == self.uploader.upload_id:
            out.append(Count("relays_dropped", (("reason", msg.reason),)))
        self._send_up(self.uploader.on_nack(msg.ref, msg.reason, RELAY_PERMANENT, now, self.linked), now, out)

    def _on_state(self, st: State, now: float, out: list[Action]) -> None:
        weights: TensorDict | None = None
        held = self.version
        if st.model is not None and st.model.version != held:
            base = None
            if st.model.encoding != "full":
                if self.agents is None or st.model.base_version != held:
                    raise WireError(
                        Reason.BAD_PAYLOAD,
                        f"model v{st.model.version} is a delta from v{st.model.base_version}; "
                        f"this station holds v{held}",
                    )
                base = self.agents.global_model
            weights = decode_model(st.model, base)
            if st.model.version != st.model_version:
                raise WireError(
                    Reason.SCHEMA, f"STATE names v{st.model_version} but carries v{st.model.version}"
                )
        elif st.model_version != held:
            raise WireError(
                Reason.BAD_PAYLOAD, f"STATE for v{st.model_version} without its model; holding v{held}"
            )
        if self.agents is None:
            assert weights is not None
            self.store.save_model(st.model_version, weights, now)
            self.store.open_round(st.round, st.model_version, now, None)
            self.agents = _AgentSide(self.store, self.cfg.ground, self)
            out.append(
                Log("INFO", f"synced with the aggregator: model v{st.model_version}, round {st.round}")
            )
        self.agents.install(st, weights, now, out)
        self.store.set_meta(STATE_META, json.dumps(_state_fields(st)))
        out.append(Gauge("model_version", st.model_version))
        out.append(Gauge("round", st.round))
        if weights is not None:
            out.append(
                Log(
                    "INFO",
                    f"serving model v{st.model_version} (round {st.round}{', final' if st.done else ''})",
                )
            )
        if self.linked:  # let the aggregator know which version to send deltas against
            self._send_up([encode(Heartbeat(self._id(), self.version, self.outbox.pending()))], now, out)

    def _on_allow(self, msg: Allow, out: list[Action]) -> None:
        old = self.allowed
        self.store.set_meta(ALLOW_META, json.dumps({"version": msg.version, "keys": msg.keys}))
        self.allowed, self.allow_version = msg.keys, msg.version
        if allow_version(msg.keys) != msg.version:
            out.append(Log("WARNING", f"allow-list named {msg.version} does not match its digest"))
        revoked = set(old or {}) - set(msg.keys or {}) if msg.keys is not None else set()
        if revoked and self.agents is not None:
            self.agents.forget(revoked)
        n = "any agent" if msg.keys is None else f"{len(msg.keys)} agent(s)"
        gone = f"; revoked {', '.join(sorted(revoked))}" if revoked else ""
        out.append(Log("INFO", f"agent allow-list {msg.version}: {n}{gone}"))
        out.append(AllowAgents(msg.version, msg.keys))
