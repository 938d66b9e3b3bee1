"""The aggregator of a ground network: the ground machine, with ground stations as its peers.

``orbitfl ground serve --role aggregator``. Agents talk to stations (orbitfl.ground.station); each
station relays the updates it admitted and ACKed (RELAY, over its own store-and-forward link), and
the aggregator folds each into the open round once, deduplicating on the agent's update id across
every station. Each new model version goes to every station as a STATE (the round, its recipe and
hints, the model as a delta from the version the station holds); the federation's agent allow-list
goes as an ALLOW whenever it changes. No sockets, no clock: the same machine runs in the daemon and
in the simulator.

What a relayed update is checked for here: it is an UPDATE of the agent the station names, not seen
before, decodable against the model. What the station checked when it ACKed (the agent's task and
samples, the norm bound, the staleness at that time) is not checked again: a station's ACK is the
federation's promise that the update counts, so a relay that waited out a terrestrial outage is
folded in with its true staleness rather than refused. One agent's task is counted once even if it
reaches us as two different updates through two stations (the task ids are the same).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from orbitfl.ground.admission import delta_norm
from orbitfl.ground.machine import GroundConfig, GroundMachine, _Peer
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import Strategy
from orbitfl.runtime.events import Action, Count, Event, Gauge, Log, Tick
from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import (
    Ack,
    Allow,
    Hello,
    Message,
    Nack,
    Relay,
    State,
    Update,
    decode,
)
from orbitfl.wire.tensors import check_against_model

# What a station's HELLO carries in its capabilities: the allow-list version it holds.
ALLOW_CAP = "allow"


def allow_version(keys: Mapping[str, str] | None) -> str:
    """The name of an allow-list: a digest of its sorted entries ("open" without keys)."""
    if keys is None:
        return "open"
    text = json.dumps(sorted(keys.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class AggregatorMachine(GroundMachine):
    """The federation's state at the aggregator. Its peers are stations, named by their keys."""

    def __init__(
        self,
        store: GroundStore,
        config: GroundConfig,
        initial_model: Mapping[str, npt.NDArray[Any]] | None = None,
        strategy: Strategy | None = None,
        allow: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(store, config, initial_model, strategy)
        self.allow: dict[str, str] | None = None if allow is None else dict(allow)
        self.allow_version = allow_version(self.allow)
        self._station_allow: dict[str, str] = {}  # station peer -> allow-list version it holds
        self._offered: dict[str, float] = {}  # station peer -> when it was last sent a STATE
        self.relayed = 0

    # --- the allow-list ---------------------------------------------------------------------------

    def set_allow_list(self, keys: Mapping[str, str] | None, now: float) -> list[Action]:
        """The federation's agents changed (e.g. ``orbitfl keys revoke``): tell every station."""
        out: list[Action] = []
        self.allow = None if keys is None else dict(keys)
        self.allow_version = allow_version(self.allow)
        for peer, p in self.peers.items():
            if p.online:
                self._send_allow(peer, out)
        out.append(
            Log("INFO", f"agent allow-list {self.allow_version}: {self._allow_size()} sent to stations")
        )
        return out

    def _allow_size(self) -> str:
        return "any agent" if self.allow is None else f"{len(self.allow)} agent(s)"

    def _send_allow(self, peer: str, out: list[Action]) -> None:
        if self._station_allow.get(peer) == self.allow_version:
            return
        out.append(self._send(peer, Allow(self._id(), self.allow_version, self.allow)))
        # Assumed held until the station says otherwise in its next HELLO.
        self._station_allow[peer] = self.allow_version

    # --- stations ---------------------------------------------------------------------------------

    def _on_hello(self, peer: str, msg: Hello, now: float, out: list[Action]) -> None:
        self.admission.check_hello(msg, peer, self.cfg.bind_agent_to_peer)
        mine = self.cfg.model_fingerprint
        if mine is not None and msg.model_fingerprint is not None and msg.model_fingerprint != mine:
            raise WireError(
                Reason.MODEL_MISMATCH,
                f"station {msg.agent_id!r} serves model {msg.model_fingerprint}, but this federation's "
                f"model is {mine}: reset the station's state_dir",
                msg.id,
            )
        self.peers[peer] = _Peer(msg.agent_id, True, msg.model_version, now)
        held = msg.capabilities.get(ALLOW_CAP)
        self._station_allow[peer] = held if isinstance(held, str) else ""
        pending = msg.capabilities.get("pending")
        out.append(Count("stations_hello"))
        out.append(
            Log(
                "INFO",
                f"station {msg.agent_id!r} linked (holding model v{msg.model_version}, "
                f"{pending} relay(s) pending)",
                f"{peer}:hello",
            )
        )
        out.append(Gauge("stations_online", sum(1 for p in self.peers.values() if p.online)))
        self._send_allow(peer, out)
        self._offer_task(peer, self.peers[peer], now, out)

    def _still_training(self, agent_id: str, now: float) -> bool:
        return False  # a station is never busy: it always takes the next version

    def _offer_task(self, peer: str, p: _Peer, now: float, out: list[Action]) -> None:
        """Send the station the open round (or the end) and the model it does not hold yet."""
        self._offered[peer] = now
        blob = None if p.model_version == self.version else self._model_blob(p.model_version)
        deadline_in = None if self.deadline is None or self.done else max(0.0, self.deadline - now)
        held = "none" if p.model_version is None else p.model_version
        done = self.done
        # Named by its content, so a resend continues the same chunked transfer.
        mid = f"{self.cfg.ground_id}:state.r{self.round}.v{self.version}{'.end' if done else ''}.from{held}"
        hints = {**self.strategy.task_hints(self._caps), **self.cfg.hints}
        state = State(
            mid,
            self.round,
            self.version,
            self.cfg.recipe,
            hints,
            deadline_in,
            self.cfg.max_staleness,
            done,
            blob,
            self.cfg.model_fingerprint,
        )
        self._send_big(peer, state, now, out)

    def _on_model_refused(self, peer: str, msg: Nack, now: float, out: list[Action]) -> None:
        """A station could not apply a STATE's model (its base was not what we thought): whole."""
        p = self.peers.get(peer)
        if p is None or msg.ref is None or not msg.ref.startswith(f"{self.cfg.ground_id}:state."):
            return
        if msg.reason != Reason.MODEL_MISMATCH.value and p.model_version is not None:
            p.model_version = None
            self._offer_task(peer, p, now, out)

    def handle(self, event: Event, now: float) -> list[Action]:
        out = super().handle(event, now)
        if isinstance(event, Tick):
            # A STATE lost on the way (a small one is not chunked, so nothing resends it): a
            # station whose heartbeat still reports an older version gets it again.
            for peer, p in self.peers.items():
                behind = p.model_version != self.version
                busy = any(k[0] == peer for k in self.outbound)
                if (
                    p.online
                    and behind
                    and not busy
                    and now - self._offered.get(peer, 0.0) >= (self.cfg.retransmit_seconds)
                ):
                    self._offer_task(peer, p, now, out)
        return out

    # --- relayed updates --------------------------------------------------------------------------

    def _on_other(self, peer: str, msg: Message, now: float, out: list[Action]) -> None:
        if not isinstance(msg, Relay):
            super()._on_other(peer, msg, now, out)
            return
        try:
            self._on_relay(peer, msg, now, out)
        except WireError as err:
            raise WireError(err.reason, err.text, msg.id) from None  # the station's id for it

    def _on_relay(self, peer: str, r: Relay, now: float, out: list[Action]) -> None:
        p = self.peers.get(peer)
        if p is None:
            raise WireError(Reason.NOT_REGISTERED, "send HELLO before RELAY")
        msg = decode(r.frame, self.cfg.limits)
        if not isinstance(msg, Update):
            raise WireError(Reason.SCHEMA, f"RELAY.frame holds a {msg.TYPE}, not an UPDATE")
        self.admission.check_id(msg, r.agent_id)
        if self.store.is_seen(msg.id):
            self.duplicates += 1
            out.append(Count("updates_duplicate"))
            out.append(self._send(peer, Ack(self._id(), r.id, duplicate=True)))
            return
        if self.done:
            raise WireError(Reason.STALE, f"the federation finished; {msg.id} came too late")
        staleness = self.version - msg.base_version
        if staleness < 0:
            raise WireError(
                Reason.SCHEMA, f"base_version {msg.base_version} is newer than the global v{self.version}"
            )
        if self.store.task(msg.task_id) is not None:
            raise WireError(Reason.STALE, f"task {msg.task_id!r} was answered already by another update")
        delta = self._decode(msg)  # compact updates too: ids are content hashes, the same on every node
        check_against_model(delta, self._spec_in, require_all=not self.strategy.partial_ok)
        self.store.put_task(msg.task_id, r.agent_id, msg.round, now, None)
        self.relayed += 1
        if staleness > self.cfg.max_staleness:
            out.append(Count("relays_late"))
        out.append(Count("relays_accepted", (("station", p.agent_id),)))
        self._accept(
            peer,
            r.agent_id,
            msg,
            r.frame,
            delta,
            delta_norm(self._model_part(delta)),
            staleness,
            now,
            out,
            r.id,
        )
