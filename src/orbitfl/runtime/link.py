"""The link: ZeroMQ sockets between the ground (ROUTER) and its agents (DEALERs).

The link moves opaque frames (bytes) and knows nothing of messages or models. It owns what
sockets need and the federation logic must not see:

- CurveZMQ encryption and authentication by default. The ground admits only agents whose public
  key is in an allow-list folder; an unknown key is refused by the ZAP handler at the handshake,
  so its frames never reach the application. Plaintext needs an explicit ``insecure=True``.
  ``reload_keys`` rereads the folder while serving (SIGHUP in the daemon): a removed key is refused
  at its next handshake and its open connection is no longer served; each refusal is logged with
  the z85 key and the name it had. An agent whose key is refused waits ``refused_backoff_s``.
- ``MAXMSGSIZE`` on every socket, so an oversize frame is dropped by libzmq before it is read.
- Liveness with heartbeats (zguide's Paranoid Pirate): an empty frame is a heartbeat, which no
  valid message can be. The agent pings when it has sent nothing for an interval; the ground
  answers every ping. An agent that hears nothing for ``liveness`` intervals declares the link
  down, closes its socket and reconnects after a capped exponential backoff with jitter.
- ``time.monotonic()`` everywhere and ``poll`` with timeouts, never a blocking receive.

Ground peers are named by who they proved to be: with Curve, the name of the allow-listed key
(its file name); without, the name an agent declares in its routing id.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from orbitfl.runtime.service import LogLimiter
from orbitfl.wire.errors import Reason
from orbitfl.wire.messages import Nack, encode

log = logging.getLogger(__name__)

HEARTBEAT = b""
DEFAULT_MAX_MSG_SIZE = 16 * 1024 * 1024
# Frames libzmq may queue per peer before it stops reading that peer's TCP stream (receive): with
# MAXMSGSIZE this bounds what one peer can make the ground hold in socket queues. Above an agent's
# window (8 chunks) plus its acks and heartbeats, so a well-behaved agent never stalls its pipe:
# libzmq 4.3.5 aborts (assertion !_io_error, stream_engine_base.cpp:310) when a peer disconnects
# while its stalled input is being restarted, which a very small RCVHWM made happen under load.
DEFAULT_RCVHWM = 32
DEFAULT_SNDHWM = 64
# One poll hands the daemon at most this many bytes of frames (the rest wait in the queues
# above): what the daemon holds at once, and the largest group commit.
DEFAULT_POLL_BYTES = 8 * 1024 * 1024
DEFAULT_POLL_FRAMES = 256
# A routing id is the agent's name, a separator and a random tag; the tag makes each new socket a
# new identity, so a reconnect never collides with the ROUTER's memory of the previous socket.
_ID_SEP = b"\x00"
_TAG_BYTES = 6
_REFUSAL_LOG_S = 60.0  # at most one log line per refused key in this interval
_HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class LinkError(Exception):
    """A link could not be set up (bad key file, bad endpoint)."""


@dataclass(frozen=True)
class Received:
    """A frame from a peer. On the ground ``peer`` is the agent's name; on an agent, ``"ground"``."""

    peer: str
    frame: bytes


@dataclass(frozen=True)
class Up:
    """The agent heard from the ground after (re)connecting."""


@dataclass(frozen=True)
class Down:
    """The agent heard nothing from the ground for ``liveness`` heartbeat intervals."""

    silent_s: float


@dataclass(frozen=True)
class KeyRefused:
    """The ground refused this agent's key at the handshake; the link waits ``retry_s`` before
    dialling again (a revoked key will not start working by itself a second later)."""

    retry_s: float


LinkEvent = Received | Up | Down | KeyRefused


@dataclass
class LinkStats:
    """Counters the daemons export as metrics."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    heartbeats_in: int = 0
    heartbeats_out: int = 0
    send_failures: int = 0
    auth_failures: int = 0
    reconnects: int = 0
    refused_unknown_peer: int = 0
    refused_revoked: int = 0  # frames on a connection whose key was revoked since it was admitted


@dataclass
class Backoff:
    """Capped exponential backoff with jitter (the delay before the n-th retry).

    The n-th delay is drawn uniformly from ``[d/2, d]`` with ``d = min(cap, initial * factor**n)``:
    retries spread out so a fleet does not reconnect in lockstep after a ground restart, and no
    delay ever exceeds ``cap`` or falls below half the initial delay.
    """

    initial_s: float = 0.5
    cap_s: float = 30.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def __post_init__(self) -> None:
        if not self.initial_s > 0:
            raise ValueError(f"backoff initial_s must be > 0, got {self.initial_s}")
        if not self.cap_s >= self.initial_s:
            raise ValueError(f"backoff cap_s must be >= initial_s ({self.initial_s}), got {self.cap_s}")
        if not self.factor >= 1.0:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")

    def next_delay(self) -> float:
        # Exponent capped before computing, so a long outage cannot overflow the float.
        d = min(self.cap_s, self.initial_s * self.factor ** min(self.attempt, 64))
        self.attempt += 1
        return self.rng.uniform(d / 2, d)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class CurveServerKeys:
    """The ground's keys: its secret certificate and a folder of allowed agents' public keys."""

    secret_file: Path
    allowed_dir: Path


@dataclass(frozen=True)
class CurveClientKeys:
    """An agent's keys: its secret certificate and the ground's public certificate."""

    secret_file: Path
    server_public_file: Path


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a ZeroMQ secret certificate, with an error naming the file."""
    try:
        public, secret = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot read secret key file {path}: {exc}") from exc
    if not secret:
        raise LinkError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public(path: Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot read public key file {path}: {exc}") from exc
    return public


def allowed_keys(allowed_dir: Path) -> dict[bytes, str]:
    """z85 public key -> agent name (the certificate's file name) for every ``*.key`` in a folder."""
    if not allowed_dir.is_dir():
        raise LinkError(f"allow-list folder {allowed_dir} does not exist")
    out: dict[bytes, str] = {}
    for cert in sorted(allowed_dir.glob("*.key")):
        out[load_public(cert)] = cert.stem
    return out


class AllowList:
    """The allow-list the ZAP handler consults at each handshake, replaceable while serving.

    The ZAP thread calls ``callback``; the loop calls ``replace`` and ``refusals``. The key map is
    swapped whole (one reference assignment), and refusals go through a deque, so neither side
    needs a lock. Refused keys are remembered with the name they had, if they ever had one.
    """

    def __init__(self, names: dict[bytes, str]) -> None:
        self.names = names
        self.former: dict[bytes, str] = {}
        self._refused: deque[bytes] = deque(maxlen=1024)

    def callback(self, domain: str, key: bytes) -> bool:
        ok = key in self.names
        if not ok:
            self._refused.append(key)
        return ok

    def replace(self, names: dict[bytes, str]) -> tuple[list[str], list[str]]:
        """Install ``names``; returns (added, removed) agent names."""
        old = self.names
        self.names = names
        for k, n in old.items():
            if k not in names:
                self.former[k] = n
        added = sorted(n for k, n in names.items() if k not in old)
        removed = sorted(n for k, n in old.items() if k not in names)
        return added, removed

    def refusals(self) -> list[tuple[str, str | None]]:
        """(z85 key, former agent name or None) of each handshake refused since the last call."""
        out = []
        while self._refused:
            key = self._refused.popleft()
            out.append((key.decode("ascii", "replace"), self.former.get(key)))
        return out


def _routing_id(name: str) -> bytes:
    raw = name.encode()
    if not raw or _ID_SEP in raw or len(raw) > 200:
        raise ValueError(f"agent name must be 1-200 bytes of UTF-8 without NUL, got {name!r}")
    return raw + _ID_SEP + secrets.token_bytes(_TAG_BYTES)


def _event_name(event: int) -> str:
    for name in ("HANDSHAKE_FAILED_AUTH", "HANDSHAKE_FAILED_PROTOCOL", "HANDSHAKE_FAILED_NO_DETAIL"):
        if event & getattr(zmq, "EVENT_" + name):
            return name.lower()
    return str(event)


class GroundLink:
    """The ground's ROUTER. ``poll`` returns frames from agents; ``send`` addresses an agent by name."""

    def __init__(
        self,
        endpoint: str,
        *,
        keys: CurveServerKeys | None,
        insecure: bool = False,
        max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
        heartbeat_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if keys is None and not insecure:
            raise LinkError("the ground needs Curve keys; plaintext only with an explicit insecure=True")
        if max_msg_size <= 0:
            raise ValueError(f"max_msg_size must be > 0, got {max_msg_size}")
        self.clock = clock
        self.stats = LinkStats()
        self.last_seen: dict[str, float] = {}
        self._route: dict[str, bytes] = {}
        self._multipart = 0  # multipart messages refused (each gets a NACK)
        self._log_limiter = LogLimiter()
        self._names: dict[bytes, str] = {}
        # A context has one ZAP endpoint, so each ground gets its own context unless given one.
        self._own_ctx = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._auth: ThreadAuthenticator | None = None
        self._allow: AllowList | None = None
        self._allowed_dir: Path | None = None
        self._revoked_seen: set[bytes] = set()
        self._refusal_log: dict[str, tuple[float | None, int]] = {}  # key -> (last logged, quiet since)
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.linger = 0
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_msg_size)
        self._sock.setsockopt(zmq.RCVHWM, DEFAULT_RCVHWM)
        self._sock.setsockopt(zmq.SNDHWM, DEFAULT_SNDHWM)
        # A reconnecting agent's new socket takes over its name at once (no waiting for the old
        # TCP connection to time out), and an unroutable send raises rather than vanishing.
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        ivl_ms = max(1, int(heartbeat_s * 1000))
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, ivl_ms)
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl_ms)
        try:
            if keys is not None and not insecure:
                self._names = allowed_keys(keys.allowed_dir)
                self._allowed_dir = keys.allowed_dir
                self._allow = AllowList(self._names)
                public, secret = load_secret(keys.secret_file)
                self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger(__name__ + ".auth"))
                self._auth.start()
                # A callback rather than a folder read once: the allow-list can change while serving.
                self._auth.configure_curve_callback(domain="*", credentials_provider=self._allow)
                self._sock.curve_server = True
                self._sock.curve_secretkey = secret
                self._sock.curve_publickey = public
            self._monitor = self._sock.get_monitor_socket(_HANDSHAKE_FAILED)
            self._sock.bind(endpoint)
        except (zmq.ZMQError, LinkError) as exc:
            self.close()
            if isinstance(exc, LinkError):
                raise
            raise LinkError(f"cannot bind {endpoint}: {exc}") from exc
        self.endpoint = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    @property
    def secure(self) -> bool:
        return self._auth is not None

    def allowed_names(self) -> list[str]:
        return sorted(self._names.values())

    def reload_keys(self) -> tuple[list[str], list[str]]:
        """Reread the allow-list folder; returns (added, removed) agent names. A removed agent's
        handshakes are refused from now on, and frames on its open connection are dropped."""
        if self._allow is None or self._allowed_dir is None:
            return [], []
        names = allowed_keys(self._allowed_dir)  # a LinkError leaves the current list in place
        added, removed = self._allow.replace(names)
        self._names = names
        for name in removed:
            self._route.pop(name, None)
        return added, removed

    def _peer_name(self, routing_id: bytes, user_id: str | None) -> str | None:
        if self._auth is not None:
            # With Curve the ZAP handler stamped the frame with the client's z85 public key.
            if user_id is None:
                return None
            return self._names.get(user_id.encode())
        name, sep, _ = routing_id.partition(_ID_SEP)
        if not sep:
            return None
        try:
            return name.decode()
        except UnicodeDecodeError:
            return None

    def poll(
        self,
        timeout_s: float,
        max_bytes: int = DEFAULT_POLL_BYTES,
        max_frames: int = DEFAULT_POLL_FRAMES,
    ) -> list[Received]:
        """Wait up to ``timeout_s`` and return the frames that arrived, up to ``max_frames`` or
        about ``max_bytes`` (the rest stay queued for the next call; heartbeats are answered here)."""
        out: list[Received] = []
        events = dict(self._poller.poll(max(0, int(timeout_s * 1000))))
        if self._monitor in events:
            self._drain_monitor()
        if self._sock not in events:
            return out
        held = 0
        while len(out) < max_frames and held < max_bytes:
            try:
                parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(parts) != 2:
                # A ROUTER prepends the routing id; a DEALER that sent several parts (or none) is
                # not speaking the protocol: it gets a NACK, and the frames never reach the machine.
                self.stats.refused_unknown_peer += 1
                if len(parts) > 2:
                    self._refuse_multipart(parts[0].bytes, parts[1], len(parts) - 1)
                continue
            rid = parts[0].bytes
            body = parts[1]
            user_id: str | None = None
            if self._auth is not None:
                try:
                    uid = body.get("User-Id")
                except zmq.ZMQError:
                    uid = None
                user_id = uid if isinstance(uid, str) else None
            name = self._peer_name(rid, user_id)
            if name is None:
                if user_id is not None and self._allow is not None:
                    self._drop_revoked(rid, user_id, body.bytes == HEARTBEAT)
                    continue
                self.stats.refused_unknown_peer += 1
                log.warning("frame from an unnamed peer dropped")
                continue
            self._route[name] = rid
            self.last_seen[name] = self.clock()
            data = body.bytes
            if data == HEARTBEAT:
                self.stats.heartbeats_in += 1
                self._send_raw(rid, HEARTBEAT)
                self.stats.heartbeats_out += 1
                continue
            self.stats.frames_in += 1
            self.stats.bytes_in += len(data)
            held += len(data)
            out.append(Received(name, data))
        return out

    def _drop_revoked(self, rid: bytes, user_id: str, heartbeat: bool) -> None:
        """A connection admitted before its key was revoked: nothing it sends is served, not even
        heartbeats, so the agent soon declares the link down and its next handshake is refused."""
        if not heartbeat:
            self.stats.refused_revoked += 1
        if rid in self._revoked_seen:
            return
        if len(self._revoked_seen) > 4096:
            self._revoked_seen.clear()
        self._revoked_seen.add(rid)
        assert self._allow is not None
        former = self._allow.former.get(user_id.encode())
        log.warning(
            "refused frames from revoked key %s (agent %s) on its open connection",
            user_id,
            former or "unknown",
        )

    def _refuse_multipart(self, rid: bytes, first: zmq.Frame, n: int) -> None:
        user_id: str | None = None
        if self._auth is not None:
            try:
                uid = first.get("User-Id")
            except zmq.ZMQError:
                uid = None
            user_id = uid if isinstance(uid, str) else None
        name = self._peer_name(rid, user_id)
        if name is None:
            return  # an unnamed peer gets nothing, as for a single frame
        self._multipart += 1
        nack = Nack(f"link:m{self._multipart}", None, Reason.MALFORMED.value, f"a frame is one part, got {n}")
        self._send_raw(rid, encode(nack))
        line = self._log_limiter.line(
            f"{name}:multipart", f"a {n}-part message from {name!r} was refused", time.monotonic()
        )
        if line is not None:
            log.warning("%s", line)

    def _drain_monitor(self) -> None:
        while True:
            try:
                msg = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            event = parse_monitor_message(msg)
            if event["event"] & _HANDSHAKE_FAILED:
                self.stats.auth_failures += 1
                if self._allow is None:
                    log.warning("handshake refused (%s)", _event_name(event["event"]))
        if self._allow is not None:
            now = self.clock()
            for key, former in self._allow.refusals():
                # A client redialling in a tight loop gets one line a minute, not one per attempt.
                last, quiet = self._refusal_log.get(key, (None, 0))
                if last is not None and now - last < _REFUSAL_LOG_S:
                    self._refusal_log[key] = (last, quiet + 1)
                    continue
                if len(self._refusal_log) > 4096:
                    self._refusal_log.clear()
                self._refusal_log[key] = (now, 0)
                who = f"revoked agent {former}" if former else "not in the allow-list"
                more = f"; {quiet} more refused since the last line" if quiet else ""
                log.warning("handshake refused: key %s (%s)%s", key, who, more)

    def _send_raw(self, rid: bytes, frame: bytes) -> bool:
        try:
            self._sock.send_multipart([rid, frame], zmq.NOBLOCK)
            return True
        except (zmq.Again, zmq.ZMQError):
            # EHOSTUNREACH: the agent is gone (ROUTER_MANDATORY); EAGAIN: its queue is full.
            self.stats.send_failures += 1
            return False

    def send(self, peer: str, frame: bytes) -> bool:
        """Send to an agent that has spoken to us; False when it is not reachable now."""
        if frame == HEARTBEAT:
            raise ValueError("an empty frame is reserved for heartbeats")
        rid = self._route.get(peer)
        if rid is None:
            self.stats.send_failures += 1
            return False
        ok = self._send_raw(rid, frame)
        if ok:
            self.stats.frames_out += 1
            self.stats.bytes_out += len(frame)
        return ok

    def close(self) -> None:
        if getattr(self, "_monitor", None) is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None  # type: ignore[assignment]
        if not self._sock.closed:
            self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._own_ctx and not self._ctx.closed:
            self._ctx.term()

    def __enter__(self) -> GroundLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AgentLink:
    """An agent's DEALER, with liveness and reconnects. ``poll`` returns :data:`LinkEvent` s."""

    _refused = False

    def __init__(
        self,
        endpoint: str,
        name: str,
        *,
        keys: CurveClientKeys | None,
        insecure: bool = False,
        max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
        heartbeat_s: float = 1.0,
        liveness: int = 3,
        backoff: Backoff | None = None,
        refused_backoff_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if keys is None and not insecure:
            raise LinkError("an agent needs Curve keys; plaintext only with an explicit insecure=True")
        if not refused_backoff_s > 0:
            raise ValueError(f"refused_backoff_s must be > 0, got {refused_backoff_s}")
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be > 0, got {heartbeat_s}")
        if liveness < 1:
            raise ValueError(f"liveness must be >= 1, got {liveness}")
        if max_msg_size <= 0:
            raise ValueError(f"max_msg_size must be > 0, got {max_msg_size}")
        _routing_id(name)  # validate the name now rather than at the first connect
        self.endpoint = endpoint
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.liveness = liveness
        self.max_msg_size = max_msg_size
        self.backoff = backoff or Backoff()
        self.refused_backoff_s = refused_backoff_s
        self.clock = clock
        self.stats = LinkStats()
        self.up = False
        self._ctx = context or zmq.Context.instance()
        self._curve: tuple[bytes, bytes, bytes] | None = None
        if keys is not None and not insecure:
            public, secret = load_secret(keys.secret_file)
            self._curve = (public, secret, load_public(keys.server_public_file))
        self._sock: zmq.Socket[bytes] | None = None
        self._mon: zmq.Socket[bytes] | None = None
        now = clock()
        self._last_heard = now
        self._last_sent = now
        self._reconnect_at = now  # connect on the first poll
        self._pending_down: float | None = None

    @property
    def secure(self) -> bool:
        return self._curve is not None

    @property
    def last_heard(self) -> float:
        """Monotonic time a frame or heartbeat last came from the ground (or the last dial)."""
        return self._last_heard

    def _open(self) -> None:
        sock = self._ctx.socket(zmq.DEALER)
        sock.linger = 0
        sock.routing_id = _routing_id(self.name)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_msg_size)
        # Queue nothing for a connection that is not complete: a send while down fails at once
        # and the outbox, not a socket buffer, holds what still has to go.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        ivl_ms = max(1, int(self.heartbeat_s * 1000))
        sock.setsockopt(zmq.RECONNECT_IVL, ivl_ms)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.backoff.cap_s * 1000))
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.liveness * ivl_ms)
        if self._curve is not None:
            public, secret, server = self._curve
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.curve_serverkey = server
        # A dropped TCP connection (the ground died or the contact ended) is seen at once, without
        # waiting for liveness to run out: the machine hears LinkDown and says HELLO again after.
        # The ground's refusal of our key is seen too, so the agent waits long instead of redialling.
        self._mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self._refused = False
        sock.connect(self.endpoint)
        self._sock = sock
        now = self.clock()
        self._last_heard = now
        self._last_sent = now - self.heartbeat_s  # ping at once: an answer proves the link
        self.stats.reconnects += 1

    def _close(self) -> None:
        if self._sock is not None:
            if self._mon is not None:
                self._sock.disable_monitor()
                self._mon.close(linger=0)
                self._mon = None
            self._sock.close(linger=0)
            self._sock = None

    def _disconnected(self) -> bool:
        """True if libzmq reported the connection dropped since the last look (and notes in
        ``_refused`` a handshake the ground refused)."""
        if self._mon is None:
            return False
        dropped = False
        while True:
            try:
                msg = self._mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return dropped
            ev = parse_monitor_message(msg)["event"]
            dropped = dropped or ev == zmq.EVENT_DISCONNECTED
            self._refused = self._refused or ev == zmq.EVENT_HANDSHAKE_FAILED_AUTH

    def _ping(self) -> None:
        assert self._sock is not None
        try:
            self._sock.send(HEARTBEAT, zmq.NOBLOCK)
        except zmq.Again:
            # Not connected yet (IMMEDIATE): try again shortly rather than a whole interval later.
            self._last_sent = self.clock() - self.heartbeat_s + min(0.05, self.heartbeat_s)
            return
        self.stats.heartbeats_out += 1
        self._last_sent = self.clock()

    def next_deadline(self) -> float:
        """The monotonic time at which the link next needs ``poll`` (ping, liveness or reconnect)."""
        if self._sock is None:
            return self._reconnect_at
        return min(self._last_sent + self.heartbeat_s, self._last_heard + self.heartbeat_s * self.liveness)

    def poll(self, timeout_s: float) -> list[LinkEvent]:
        """Wait up to ``timeout_s`` (less if the link needs attention) and return what happened."""
        events: list[LinkEvent] = []
        if self._pending_down is not None:
            events.append(Down(self._pending_down))
            self._pending_down = None
        now = self.clock()
        if self._sock is None:
            if now < self._reconnect_at:
                time.sleep(max(0.0, min(timeout_s, self._reconnect_at - now)))
                return events
            self._open()
        assert self._sock is not None
        now = self.clock()
        if now - self._last_sent >= self.heartbeat_s:
            self._ping()
        wait = max(0.0, min(timeout_s, self.next_deadline() - now))
        if self._sock.poll(int(wait * 1000), zmq.POLLIN):
            while True:
                try:
                    data = self._sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._last_heard = self.clock()
                if not self.up:
                    self.up = True
                    self.backoff.reset()
                    events.append(Up())
                if data == HEARTBEAT:
                    self.stats.heartbeats_in += 1
                    continue
                self.stats.frames_in += 1
                self.stats.bytes_in += len(data)
                events.append(Received("ground", data))
        now = self.clock()
        silent = now - self._last_heard
        dropped = self._disconnected()
        if self._refused:
            self._close()
            self.stats.auth_failures += 1
            self._reconnect_at = now + self.refused_backoff_s
            if self.up:
                self.up = False
                events.append(Down(silent))
            events.append(KeyRefused(self.refused_backoff_s))
            return events
        if silent >= self.heartbeat_s * self.liveness or (self.up and dropped):
            # Lazy Pirate: a silent peer means a dead socket; throw it away and dial again later.
            self._close()
            self._reconnect_at = now + self.backoff.next_delay()
            if self.up:
                self.up = False
                events.append(Down(silent))
        elif now - self._last_sent >= self.heartbeat_s:
            self._ping()
        return events

    def send(self, frame: bytes) -> bool:
        """Queue a frame to the ground; False when the link is down (the caller keeps it)."""
        if frame == HEARTBEAT:
            raise ValueError("an empty frame is reserved for heartbeats")
        if self._sock is None or not self.up:
            self.stats.send_failures += 1
            return False
        try:
            self._sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.stats.send_failures += 1
            return False
        self._last_sent = self.clock()
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)
        return True

    def suspend(self, duration_s: float) -> None:
        """Cut the link for ``duration_s``, as a lost contact would (``--outages`` and tests).

        The next ``poll`` reports :class:`Down` if the link was up; it dials again afterwards.
        """
        if duration_s < 0:
            raise ValueError(f"duration_s must be >= 0, got {duration_s}")
        now = self.clock()
        self._close()
        self._reconnect_at = now + duration_s
        if self.up:
            self.up = False
            self._pending_down = now - self._last_heard

    def close(self) -> None:
        self._close()
        self.up = False

    def __enter__(self) -> AgentLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
