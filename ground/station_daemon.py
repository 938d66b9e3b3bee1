"""The station daemon: ``orbitfl ground serve --role station --config station.toml``.

A thin shell around :class:`StationMachine`, like the ground daemon: the agents' link (a ROUTER on
``ground.bind``, with the station's own Curve keys) and the link to the aggregator (a DEALER dialling
``ground.upstream`` with the same keys, as an agent dials its ground) become events; the machine's
actions become sends, log lines and metrics. The agents' allow-list comes from the aggregator: each
ALLOW is written as key files into ``state_dir/agents_allowed`` and the link rereads them, so a
revoked agent's handshakes are refused from then on.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad config or key, 1 for anything else that stops it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orbitfl.ground.admission import Guards
from orbitfl.ground.machine import GroundConfig
from orbitfl.ground.metrics import GroundMetrics, MetricsServer
from orbitfl.ground.station import StationConfig, StationMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.config import ConfigError, GroundSettings, prepare_state_dir
from orbitfl.runtime.events import (
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
from orbitfl.runtime.keys_cli import PID_FILE
from orbitfl.runtime.link import (
    AgentLink,
    Backoff,
    CurveClientKeys,
    CurveServerKeys,
    Down,
    GroundLink,
    KeyRefused,
    LinkError,
    Received,
    Up,
    load_public,
    load_secret,
)
from orbitfl.runtime.observe import Health
from orbitfl.runtime.outbox import Outbox
from orbitfl.runtime.service import LogLimiter, Notifier, Reload, Shutdown, serve

log = logging.getLogger("orbitfl.station")

TICK_S = 0.25
ALLOWED_DIR = "agents_allowed"  # in state_dir: the aggregator's allow-list as key files
OUTBOX_FILE = "relay.sqlite"  # in state_dir: updates ACKed to agents, not yet ACKed by the aggregator
STATE_FILES = ("ground.db", "ground.db-wal", "ground.db-shm", "models", "ckpt", "spool", OUTBOX_FILE)


def station_config(cfg: GroundSettings) -> StationConfig:
    """The TOML settings as the station machine's config; a bad value is a ConfigError."""
    g, fed, lk = cfg.ground, cfg.federation, cfg.link
    where = f"{cfg.source}: " if cfg.source is not None else ""
    try:
        return StationConfig(
            g.name,
            GroundConfig(
                chunk_bytes=lk.chunk_bytes,
                window=lk.window,
                retransmit_seconds=fed.retransmit_s,
                task_ttl=fed.task_ttl_s or None,
                keep_models=fed.keep_models,
                keep_every=fed.keep_every,
                guards=Guards(**dataclasses.asdict(cfg.admission)),
            ),
            heartbeat_seconds=max(1.0, lk.heartbeat_s * 5),
            retransmit_seconds=fed.retransmit_s,
        )
    except ValueError as exc:
        raise ConfigError(f"{where}ground: {exc}") from None


def write_allowed(folder: Path, keys: Mapping[str, str]) -> None:
    """``keys`` (name -> Z85 public key) as one public certificate per agent in ``folder``; names
    no longer listed are removed. Each file is replaced atomically, so the link never reads half."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, key in keys.items():
        path = folder / f"{name}.key"
        text = f'# orbitfl: from the aggregator\nmetadata\ncurve\n    public-key = "{key}"\n'
        if path.exists() and path.read_text() == text:
            continue
        tmp = folder / f".{name}.key.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
    for cert in folder.glob("*.key"):
        if cert.stem not in keys:
            cert.unlink()


class StationDaemon:
    def __init__(
        self,
        cfg: GroundSettings,
        *,
        shutdown: Shutdown | None = None,
        notifier: Notifier | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        reload: Reload | None = None,
        reset: bool = False,
    ) -> None:
        self.cfg = cfg
        self.shutdown = shutdown or Shutdown()
        try:
            self.notifier = notifier or Notifier()
        except ValueError as exc:
            raise ConfigError(f"environment: {exc}; fix the unit's or the caller's environment") from None
        self.reload = reload or Reload()
        self.wall, self.mono = wall, mono
        self.metrics = GroundMetrics(forward_backlog=0)
        self.log_limiter = LogLimiter()
        g = cfg.ground
        where = f"{cfg.source}: " if cfg.source is not None else ""
        scfg = station_config(cfg)
        if reset and g.state_dir.exists():
            for name in STATE_FILES:
                p = g.state_dir / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            log.warning("state in %s deleted (--reset-state)", g.state_dir)
        prepare_state_dir(g.state_dir, f"{where}ground.state_dir")
        self.allowed_dir = g.state_dir / ALLOWED_DIR
        self.allowed_dir.mkdir(exist_ok=True)
        if not g.insecure:  # read here, so that an error names its key
            for key, read in (("secret_key", load_secret), ("upstream_key", load_public)):
                try:
                    read(getattr(g, key))
                except LinkError as exc:
                    raise ConfigError(
                        f"{where}ground.{key}: {exc}; make keys with `orbitfl keys new` "
                        "(docs/operations.md, section 2)"
                    ) from None
        self.store = GroundStore(g.state_dir)
        self.outbox = Outbox(g.state_dir / OUTBOX_FILE)
        self.machine = StationMachine(self.store, self.outbox, scfg)
        if self.machine.allowed is not None:
            write_allowed(self.allowed_dir, self.machine.allowed)
        server_keys = None if g.insecure else CurveServerKeys(g.secret_key, self.allowed_dir)  # type: ignore[arg-type]
        try:
            self.link = GroundLink(
                g.bind,
                keys=server_keys,
                insecure=g.insecure,
                max_msg_size=cfg.link.max_msg_size,
                heartbeat_s=cfg.link.heartbeat_s,
            )
        except LinkError as exc:
            self.close_stores()
            raise ConfigError(
                f"{where}ground.bind: {exc}; bind a free port of an address this host has"
            ) from None
        client_keys = None if g.insecure else CurveClientKeys(g.secret_key, g.upstream_key)  # type: ignore[arg-type]
        lk = cfg.link
        self.uplink = AgentLink(
            g.upstream,
            g.name,
            keys=client_keys,
            insecure=g.insecure,
            max_msg_size=lk.max_msg_size,
            heartbeat_s=lk.heartbeat_s,
            liveness=lk.liveness,
            backoff=Backoff(lk.backoff_initial_s, lk.backoff_max_s),
            refused_backoff_s=max(5.0, lk.backoff_max_s),
        )
        self.health = Health(mono, stale_s=max(10.0, 20 * TICK_S))
        try:
            self.metrics_server = MetricsServer(self.metrics, g.metrics, self.health) if g.metrics else None
        except OSError as exc:
            self.link.close()
            self.uplink.close()
            self.close_stores()
            raise ConfigError(
                f"{where}ground.metrics: cannot listen on {g.metrics}: {exc.strerror}"
            ) from None
        self._silent: set[str] = set()
        self._next_tick = 0.0

    # --- actions ----------------------------------------------------------------------------------

    def _feed(self, events: list[Event]) -> None:
        """Handle events in one group commit, then carry out their actions (ACKs after the commit)."""
        actions: list[Any] = []
        with self.machine.batch():
            for ev in events:
                actions += self.machine.handle(ev, self.wall())
        m = self.metrics
        for a in actions:
            if isinstance(a, Send):
                self.link.send(a.peer, a.frame)
            elif isinstance(a, SendUpstream):
                self.uplink.send(a.frame)  # while down it fails; the outbox keeps the relay
            elif isinstance(a, AllowAgents):
                self._install_allow(a)
            elif isinstance(a, Log):
                line = self.log_limiter.line(a.key, a.text, self.mono())
                if line is not None:
                    log.log(logging.getLevelName(a.level), "%s", line)
            elif isinstance(a, Count):
                labels = dict(a.labels)
                with m.lock:
                    if a.name == "updates_accepted":
                        m.updates_accepted += a.n
                    elif a.name == "refused":
                        m.updates_refused[labels.get("reason", "unknown")] += a.n
                    elif a.name == "updates_duplicate":
                        m.updates_refused["duplicate"] += a.n
                    elif a.name == "relays_acked":
                        m.relays["duplicate" if labels.get("duplicate") == "true" else "acked"] += a.n
                    elif a.name == "relays_dropped":
                        m.relays["dropped"] += a.n
            elif isinstance(a, Gauge):
                if a.name == "forward_backlog":
                    m.forward_backlog = int(a.value)
                elif a.name == "round":
                    m.round = int(a.value)
                elif a.name == "model_version":
                    m.model_version = int(a.value)

    def _install_allow(self, a: AllowAgents) -> None:
        if a.keys is None or not self.link.secure:
            return
        write_allowed(self.allowed_dir, a.keys)
        try:
            added, removed = self.link.reload_keys()
        except LinkError as exc:
            log.error("allow-list from the aggregator not installed: %s", exc)
            return
        log.info(
            "allow-list %s from the aggregator: %d agent(s); added %s; revoked %s",
            a.version,
            len(a.keys),
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )

    # --- the loop ---------------------------------------------------------------------------------

    def step(self, timeout_s: float) -> None:
        events: list[Event] = []
        for ev in self.uplink.poll(0.0):
            if isinstance(ev, Up):
                log.info("linked to the aggregator at %s", self.cfg.ground.upstream)
                events.append(UpstreamUp())
            elif isinstance(ev, Down):
                log.info("aggregator link down after %.1f s of silence", ev.silent_s)
                events.append(UpstreamDown())
            elif isinstance(ev, KeyRefused):
                log.warning("the aggregator refused this station's key; dialling again in %.0f s", ev.retry_s)
            elif isinstance(ev, Received):
                events.append(UpstreamReceived(ev.frame))
        frames = self.link.poll(0.0 if events else timeout_s)
        now = self.mono()
        for r in frames:
            self._silent.discard(r.peer)
            events.append(MessageReceived(r.peer, r.frame))
        del frames
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            events.append(Tick())
            limit = self.cfg.link.heartbeat_s * self.cfg.link.liveness
            for peer, seen in self.link.last_seen.items():
                if peer not in self._silent and now - seen > limit:
                    self._silent.add(peer)
                    events.append(PeerSilent(peer))
        if events:
            self._feed(events)
        st = self.link.stats
        up = self.uplink.stats
        with self.metrics.lock:
            self.metrics.bytes_in, self.metrics.bytes_out = (
                st.bytes_in + up.bytes_in,
                st.bytes_out + up.bytes_out,
            )
            self.metrics.frames_in, self.metrics.frames_out = st.frames_in, st.frames_out
            sides = self.machine.agents
            if sides is not None:
                peers = list(sides.peers.values())
                self.metrics.agents_online = sum(1 for p in peers if p.online)
                self.metrics.agents_registered = len({p.agent_id for p in peers})
        if self.reload.take():
            log.info("SIGHUP: a station's allow-list comes from the aggregator; nothing to reread here")
        self.health.tick()
        self.notifier.watchdog(now)

    def run(self) -> int:
        self._next_tick = self.mono()
        mode = "plaintext (--insecure)" if not self.link.secure else "CurveZMQ"
        synced = f"model v{self.machine.version}" if self.machine.synced else "not synced yet"
        log.info(
            "station %s serving on %s (%s), relaying to %s; %s, %d relay(s) pending",
            self.cfg.ground.name,
            self.link.endpoint,
            mode,
            self.cfg.ground.upstream,
            synced,
            self.machine.backlog(),
        )
        if self.metrics_server is not None:
            log.info(
                "metrics on http://%s:%d/metrics",
                self.cfg.ground.metrics.rpartition(":")[0],
                self.metrics_server.port,
            )
        path = self.cfg.ground.state_dir / PID_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)
        serve(
            self.notifier,
            self.shutdown,
            self.step,
            self.mono,
            ready=f"serving on {self.link.endpoint}",
            tick_s=TICK_S,
            close=self.close,
        )
        log.info("station stopped (signal %s)", self.shutdown.signal)
        return 0

    def close_stores(self) -> None:
        self.outbox.close()
        self.store.close()

    def close(self) -> None:
        pid = self.cfg.ground.state_dir / PID_FILE
        try:
            if pid.read_text().strip() == str(os.getpid()):
                pid.unlink()
        except OSError:
            pass
        self.link.close()
        self.uplink.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.close_stores()
