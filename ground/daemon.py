"""The ground daemon: ``orbitfl ground serve --config ground.toml``.

A thin shell: the link's frames and real time go into :class:`GroundMachine` as events, and its
actions come out as sends, log lines, metrics and round reports. No federation logic lives here.
The machine is given wall time (its deadlines are stored and must survive a restart); the link and
the loop use ``time.monotonic()``.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad config or key, 1 for anything else that stops it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.codec.inputs import check_recipe
from orbitfl.data.metrics import accuracy
from orbitfl.data.user_data import DataError, check_fits, load_source
from orbitfl.ground import export
from orbitfl.ground.admission import Guards
from orbitfl.ground.aggregator import AggregatorMachine
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.metrics import GroundMetrics, MetricsServer
from orbitfl.ground.station_daemon import StationDaemon
from orbitfl.ground.status import DP_EPSILON_KEY
from orbitfl.ground.status import add_parser as add_status_parser
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import STRATEGIES, Strategy, make_strategy
from orbitfl.models import autodiff, zoo
from orbitfl.ort_import import onnxruntime
from orbitfl.runtime.config import (
    ROLES,
    ConfigError,
    GroundSettings,
    check_role,
    load_ground,
    prepare_state_dir,
)
from orbitfl.runtime.events import Count, Gauge, Log, MessageReceived, PeerSilent, RoundClosed, Send, Tick
from orbitfl.runtime.keys_cli import PID_FILE
from orbitfl.runtime.link import CurveServerKeys, GroundLink, LinkError, allowed_keys, load_secret
from orbitfl.runtime.observe import Health
from orbitfl.runtime.service import LogLimiter, Notifier, Reload, Shutdown, serve, setup_logging

log = logging.getLogger("orbitfl.ground")

TICK_S = 0.25
ROUNDS_FILE = "rounds.jsonl"


# What the state directory must agree with the config on (meta key -> what it is called).
IDENTITY = {"model_fingerprint": "model", "strategy": "strategy", "codec": "codec"}
# What a --reset-state removes from the state directory (the store's files and the round log);
# anything else there (keys, say) is left alone.
STATE_FILES = ("ground.db", "ground.db-wal", "ground.db-shm", "models", "ckpt", "spool", ROUNDS_FILE)


def initial_weights(model: str, seed: int) -> dict[str, npt.NDArray[Any]]:
    return zoo.get_weights(zoo.resolve(model, seed=seed).model)


def resolve_model(cfg: GroundSettings) -> zoo.ModelSpec:
    """The federation's model, refused (ConfigError naming the key) when it cannot be loaded or
    the agents' trainer could not train it (naming the op and node)."""
    fed = cfg.federation
    try:
        spec = zoo.resolve(fed.model, seed=fed.model_seed)
        autodiff.build_training_graphs(
            spec.model, loss=spec.default_loss, num_outputs=spec.num_outputs or None
        )
    except ValueError as exc:
        raise ConfigError(f"{_where(cfg)}federation.model: {exc}") from None
    return spec


def reset_state(state_dir: Path) -> None:
    """Delete a federation's stored state (models, rounds, log) so the next start is a new one."""
    for name in STATE_FILES:
        p = state_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def check_identity(store: GroundStore, state_dir: Path, want: Mapping[str, str], where: str) -> None:
    """Refuse to serve a state directory made for another model, strategy or codec (the stored
    models and the open round's updates belong to that one); record the identity of a new one."""
    fresh = store.latest_version() is None
    for key, what in IDENTITY.items():
        had = store.get_meta(key)
        if had is not None and not fresh and had != want[key]:
            raise ConfigError(
                f"{where}ground.state_dir {state_dir} holds a federation with {what} {had!r}, but "
                f"the config says {want[key]!r}: use a new state_dir, or pass --reset-state to "
                f"delete the old federation and start over"
            )
    for key in IDENTITY:
        store.set_meta(key, want[key])


def _where(cfg: GroundSettings) -> str:
    return f"{cfg.source}: " if cfg.source is not None else ""


def machine_config(cfg: GroundSettings, model_fingerprint: str | None = None) -> GroundConfig:
    """The one place the TOML settings become the machine's config: ``codec`` is the machine's
    ``recipe``, ``*_s`` keys are seconds, 0 and "" mean none. A bad value is a ConfigError."""
    fed = cfg.federation
    try:
        check_recipe(fed.codec)
    except ValueError as exc:
        raise ConfigError(f"{_where(cfg)}federation.codec: {exc}") from None
    try:
        return GroundConfig(
            rounds=fed.rounds or None,
            min_updates=fed.min_updates,
            round_seconds=fed.round_deadline_s,
            min_updates_at_deadline=fed.min_updates_at_deadline,
            max_staleness=fed.max_staleness,
            recipe=fed.codec,
            task_ttl=fed.task_ttl_s or None,
            retransmit_seconds=fed.retransmit_s,
            chunk_bytes=cfg.link.chunk_bytes,
            window=cfg.link.window,
            downlink_recipe=fed.downlink_codec or None,
            compact_updates=fed.compact_updates,
            model_fingerprint=model_fingerprint,
            keep_models=fed.keep_models,
            keep_every=fed.keep_every,
            guards=Guards(**dataclasses.asdict(cfg.admission)),
        )
    except ValueError as exc:
        raise ConfigError(f"{_where(cfg)}federation: {exc}") from None


def _key_setting(where: str, read: Callable[[Path], object], path: Path) -> None:
    try:
        read(path)
    except LinkError as exc:
        raise ConfigError(
            f"{where}: {exc}; make keys with `orbitfl keys new` (docs/operations.md, section 2)"
        ) from None


def build_strategy(cfg: GroundSettings) -> Strategy:
    """``federation.strategy`` with the options of the [strategy] section; a ConfigError names the
    key (e.g. ``ground.toml: [strategy] beta1 must be in [0, 1), got 1.5``)."""
    name = cfg.federation.strategy
    if name not in STRATEGIES:
        raise ConfigError(
            f"{_where(cfg)}federation.strategy: unknown strategy {name!r} "
            f"(known: {', '.join(sorted(STRATEGIES))})"
        )
    try:
        strategy = make_strategy(name, **cfg.strategy)
    except ValueError as exc:
        raise ConfigError(f"{_where(cfg)}[strategy] {exc}") from None
    held = getattr(strategy, "max_updates", None)  # the strategies that hold the round's updates
    if isinstance(held, int) and cfg.federation.min_updates > held:
        raise ConfigError(
            f"{_where(cfg)}[strategy] max_updates: {name} holds at most {held} updates "
            f"a round, below federation.min_updates ({cfg.federation.min_updates})"
        )
    return strategy


class Evaluator:
    """Scores a global model on held-out data with ONNX Runtime inference (the ground's own view of
    accuracy; agents never send their data)."""

    def __init__(self, spec: zoo.ModelSpec, dataset: str, data_seed: int) -> None:
        self._ort = onnxruntime()
        self.spec = spec
        try:
            data = load_source(dataset, seed=data_seed)
            check_fits(data, spec.input_shape, spec.num_outputs, task=spec.task)
        except (DataError, ImportError) as exc:
            raise ConfigError(f"federation.eval_dataset: {exc}") from None
        if len(data.x_test) == 0:
            raise ConfigError(f"federation.eval_dataset: {dataset} has no test samples")
        self.x = np.ascontiguousarray(
            data.x_test.reshape((len(data.x_test), *self.spec.input_shape)), dtype=np.float32
        )
        self.y = data.y_test

    def accuracy(self, weights: Mapping[str, npt.NDArray[Any]]) -> float:
        proto = zoo.with_weights(self.spec.model, weights)
        opts = self._ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = self._ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        logits = sess.run(None, {name: self.x})[0]
        return accuracy(logits, self.y)


class GroundDaemon:
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
        except ValueError as exc:  # NOTIFY_SOCKET / WATCHDOG_USEC as systemd (or a wrapper) set them
            raise ConfigError(f"environment: {exc}; fix the unit's or the caller's environment") from None
        self.reload = reload or Reload()
        self.wall = wall
        self.mono = mono
        self.metrics = GroundMetrics()
        self.log_limiter = LogLimiter()
        g, fed = cfg.ground, cfg.federation
        spec = resolve_model(cfg)
        fp = zoo.fingerprint(spec)
        mcfg = machine_config(cfg, fp)
        self.evaluator = Evaluator(spec, fed.eval_dataset, fed.data_seed) if fed.eval_dataset else None
        if reset and g.state_dir.exists():
            reset_state(g.state_dir)
            log.warning("state in %s deleted (--reset-state): a new federation starts", g.state_dir)
        prepare_state_dir(g.state_dir, f"{_where(cfg)}ground.state_dir")
        self.store = GroundStore(g.state_dir)
        try:
            check_identity(
                self.store,
                g.state_dir,
                {"model_fingerprint": fp, "strategy": fed.strategy, "codec": fed.codec},
                _where(cfg),
            )
        except ConfigError:
            self.store.close()
            raise
        self.n_params = 0
        init = None
        if self.store.latest_version() is None:
            init = zoo.get_weights(spec.model)
        aggregator = g.role == "aggregator"
        try:
            if aggregator:
                self.machine: GroundMachine = AggregatorMachine(
                    self.store, mcfg, init, build_strategy(cfg), allow=self._agent_keys()
                )
            else:
                self.machine = GroundMachine(self.store, mcfg, init, build_strategy(cfg))
        except ValueError as exc:  # e.g. a strategy that needs another model (emsfl: experts)
            self.store.close()
            raise ConfigError(f"{_where(cfg)}federation.strategy: {exc}") from None
        swept = self.machine.reasm.sweep_spool(mcfg.spool_ttl, wall=wall)
        if swept:
            log.info("removed %d partial upload(s) abandoned before this start", swept)
        self.n_params = sum(int(v.size) for v in self.machine.global_model.values())
        # An aggregator's link admits stations; the agents' allow-list is what it distributes.
        peers_key = "station_keys" if aggregator else "allowed_keys"
        keys = None if g.insecure else CurveServerKeys(g.secret_key, getattr(g, peers_key))  # type: ignore[arg-type]
        if keys is not None:  # read here too, so that an error names its key
            _key_setting(f"{_where(cfg)}ground.secret_key", load_secret, keys.secret_file)
            _key_setting(f"{_where(cfg)}ground.{peers_key}", allowed_keys, keys.allowed_dir)
        try:
            self.link = GroundLink(
                g.bind,
                keys=keys,
                insecure=g.insecure,
                max_msg_size=cfg.link.max_msg_size,
                heartbeat_s=cfg.link.heartbeat_s,
            )
        except LinkError as exc:
            raise ConfigError(
                f"{_where(cfg)}ground.bind: {exc}; bind a free port of an address this host has "
                "(tcp://*:PORT for all of them)"
            ) from None
        # A loop that has not ticked for several watchdog-sized pauses is not serving.
        self.health = Health(mono, stale_s=max(10.0, 20 * TICK_S))
        try:
            self.metrics_server = MetricsServer(self.metrics, g.metrics, self.health) if g.metrics else None
        except OSError as exc:
            self.link.close()
            raise ConfigError(
                f"{_where(cfg)}ground.metrics: cannot listen on {g.metrics}: {exc.strerror}; "
                'free the port, pick another or set metrics = "" to disable'
            ) from None
        self._silent: set[str] = set()
        self._next_tick = 0.0
        self._auth_seen = 0
        self._revoked_seen = 0
        self._status = ""
        current = self.store.current_round()
        self._round_opened = current.opened_at if current is not None and current.opened_at else wall()
        self.metrics.model_version = self.machine.version
        self.metrics.round = self.machine.round
        self.metrics.rounds_closed = self.store.rounds_closed()
        self.metrics.dp_epsilon = self._dp_epsilon()
        self.metrics.federation_finished = self.machine.done and self.store.rounds_closed() > 0

    # --- actions ----------------------------------------------------------------------------------

    def _execute(self, actions: list[Any]) -> None:
        m = self.metrics
        for a in actions:
            if isinstance(a, Send):
                self.link.send(a.peer, a.frame)  # a failed send is retried by the machine
            elif isinstance(a, Log):
                line = self.log_limiter.line(a.key, a.text, self.mono())
                if line is not None:
                    log.log(logging.getLevelName(a.level), "%s", line)
            elif isinstance(a, Count):
                labels = dict(a.labels)
                with m.lock:
                    if a.name == "updates_accepted":
                        m.updates_accepted += a.n
                    elif a.name == "updates_compact":
                        m.updates_compact += a.n
                    elif a.name == "refused":
                        m.updates_refused[labels.get("reason", "unknown")] += a.n
                    elif a.name == "updates_duplicate":
                        m.updates_refused["duplicate"] += a.n
                    elif a.name == "aggregates_refused":
                        m.aggregates_refused += a.n
                    elif a.name in ("relays_accepted", "relays_late"):
                        m.relays[a.name[len("relays_") :]] += a.n
            elif isinstance(a, Gauge):
                if a.name.startswith("strategy_"):
                    with m.lock:
                        m.strategy[a.name[len("strategy_") :]] = float(a.value)
                elif a.name == "round":
                    m.round = int(a.value)
                elif a.name == "model_version":
                    m.model_version = int(a.value)
                elif a.name == "federation_finished":
                    m.federation_finished = bool(a.value)
            elif isinstance(a, RoundClosed):
                self._report_round(a)

    def _dp_epsilon(self) -> float | None:
        raw = self.store.get_meta(DP_EPSILON_KEY)
        try:
            return None if raw is None else float(raw)
        except ValueError:
            return None

    def _report_round(self, rc: RoundClosed) -> None:
        acc = None
        if self.evaluator is not None:
            acc = self.evaluator.accuracy(self.machine.global_model)
        now = self.wall()
        with self.metrics.lock:
            self.metrics.rounds_closed += 1
            self.metrics.last_round_time = now
            self.metrics.last_round_seconds = max(0.0, now - self._round_opened)
            self.metrics.accuracy = acc if acc is not None else self.metrics.accuracy
        eps = self.machine.last_report.get("dp_epsilon")
        if eps is not None:  # kept in the store too, so `orbitfl ground status` reads it offline
            self.store.set_meta(DP_EPSILON_KEY, repr(float(eps)))
        self.metrics.dp_epsilon = self._dp_epsilon()
        self._round_opened = now
        row = {
            "round": rc.round,
            "version": rc.version,
            "updates": rc.updates,
            "samples": rc.samples,
            "uplink_bytes": rc.uplink_bytes,
            # Every frame the agents sent since this process started, control traffic (HELLO,
            # heartbeats, acks, NACKs), refused and duplicated updates included: the honest total.
            "received_bytes": self.machine.bytes_in,
            # What the same updates cost as raw float32 tensors (the FedAvg baseline).
            "float32_bytes": rc.updates * self.n_params * 4,
            "accuracy": acc,
            "time": now,
            "strategy": self.machine.strategy.name,
            # e.g. DP's privacy spent so far
            **self.machine.last_report,
        }
        with open(self.cfg.ground.state_dir / ROUNDS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        acc_s = "-" if acc is None else f"{acc:.4f}"
        log.info(
            "round %d -> v%d: %d updates, %d uplink bytes, accuracy %s",
            rc.round,
            rc.version,
            rc.updates,
            rc.uplink_bytes,
            acc_s,
        )

    # --- the loop ---------------------------------------------------------------------------------

    def step(self, timeout_s: float) -> None:
        frames = self.link.poll(timeout_s)
        now = self.mono()
        tick = now >= self._next_tick
        actions: list[Any] = []
        # Group commit: every frame the link had ready goes through the machine inside one store
        # transaction, committed (one fsync) before any of the resulting sends leave, so an ACK is
        # still never sent for an update that is not durable.
        if frames or tick:
            with self.machine.batch():
                for r in frames:
                    self._silent.discard(r.peer)
                    self.metrics.agents_seen.add(r.peer)
                    actions += self.machine.handle(MessageReceived(r.peer, r.frame), self.wall())
                del frames  # the frames are in the store or dropped; do not hold them while sending
                if tick:
                    self._next_tick = now + TICK_S
                    actions += self.machine.handle(Tick(), self.wall())
                    # A peer silent past liveness is reported once; its pending work stays with the machine.
                    limit = self.cfg.link.heartbeat_s * self.cfg.link.liveness
                    for peer, seen in self.link.last_seen.items():
                        if peer not in self._silent and now - seen > limit:
                            self._silent.add(peer)
                            actions += self.machine.handle(PeerSilent(peer), self.wall())
            self._execute(actions)
        if tick:
            self._observe(now)
        st = self.link.stats
        with self.metrics.lock:
            self.metrics.bytes_in, self.metrics.bytes_out = st.bytes_in, st.bytes_out
            self.metrics.frames_in, self.metrics.frames_out = st.frames_in, st.frames_out
            if st.auth_failures > self._auth_seen:
                self.metrics.updates_refused["unknown_key"] += st.auth_failures - self._auth_seen
                self._auth_seen = st.auth_failures
            if st.refused_revoked > self._revoked_seen:
                self.metrics.updates_refused["revoked_key"] += st.refused_revoked - self._revoked_seen
                self._revoked_seen = st.refused_revoked
        if self.reload.take():
            self._reload_keys()
        self.health.tick()
        self.notifier.watchdog(now)

    def _agent_keys(self) -> dict[str, str] | None:
        """The agents' allow-list an aggregator distributes (name -> Z85 key; None: insecure)."""
        g = self.cfg.ground
        if g.insecure or g.allowed_keys is None:
            return None
        try:
            return {name: key.decode("ascii") for key, name in allowed_keys(g.allowed_keys).items()}
        except LinkError as exc:
            raise ConfigError(f"{_where(self.cfg)}ground.allowed_keys: {exc}") from None

    def _reload_keys(self) -> None:
        if isinstance(self.machine, AggregatorMachine):
            try:
                agents = self._agent_keys()
            except ConfigError as exc:
                log.error("agents' allow-list not reloaded, the previous one stays in force: %s", exc)
            else:
                if agents != self.machine.allow:
                    with self.machine.batch():
                        actions = self.machine.set_allow_list(agents, self.wall())
                    self._execute(actions)
        try:
            added, removed = self.link.reload_keys()
        except LinkError as exc:
            log.error("allow-list not reloaded, the previous one stays in force: %s", exc)
            return
        log.info(
            "allow-list reloaded: %d key(s); added %s; revoked %s",
            len(self.link.allowed_names()),
            ", ".join(added) or "none",
            ", ".join(removed) or "none",
        )

    def _observe(self, now: float) -> None:
        """Per tick: the agents' figures for the metrics and the one-line STATUS= for systemd."""
        peers = list(self.machine.peers.values())
        online = sum(1 for p in peers if p.online)
        wall = self.wall()
        with self.metrics.lock:
            self.metrics.agents_online = online
            self.metrics.agents_registered = len({p.agent_id for p in peers})
            self.metrics.agent_online = {p.agent_id: p.online for p in peers}
            self.metrics.agent_model = {
                p.agent_id: p.model_version for p in peers if p.model_version is not None
            }
            # The link hears heartbeats too, so its times are the freshest; shown as Unix time.
            for peer, seen in self.link.last_seen.items():
                self.metrics.agent_last_seen[peer] = wall - (now - seen)
        status = f"round {self.machine.round}, model v{self.machine.version}, {online} agent(s) online"
        if status != self._status:
            self._status = status
            self.notifier.status(status)

    def run(self) -> int:
        self._next_tick = self.mono()
        mode = "plaintext (--insecure)" if not self.link.secure else "CurveZMQ"
        log.info(
            "%s serving on %s (%s), model v%d, round %d",
            "aggregator" if self.cfg.ground.role == "aggregator" else "ground",
            self.link.endpoint,
            mode,
            self.machine.version,
            self.machine.round,
        )
        closed = self.store.rounds_closed()
        if self.machine.continued_from is not None:
            log.info(
                "continuing the federation after %d rounds: federation.rounds is now %s",
                self.machine.continued_from,
                self.cfg.federation.rounds or "unlimited",
            )
        elif self.machine.done and closed:
            log.info(
                "the federation in %s finished after %d rounds (federation.rounds = %d); serving "
                "the final model v%d (raise federation.rounds to continue)",
                self.cfg.ground.state_dir,
                closed,
                closed,
                self.machine.version,
            )
        if self.metrics_server is not None:
            log.info(
                "metrics on http://%s:%d/metrics",
                self.cfg.ground.metrics.rpartition(":")[0],
                self.metrics_server.port,
            )
        self._write_pid()
        serve(
            self.notifier,
            self.shutdown,
            self.step,
            self.mono,
            ready=f"serving on {self.link.endpoint}",
            tick_s=TICK_S,
            close=self.close,
        )
        log.info("ground stopped (signal %s)", self.shutdown.signal)
        return 0

    def _write_pid(self) -> None:
        path = self.cfg.ground.state_dir / PID_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, path)

    def close(self) -> None:
        pid = self.cfg.ground.state_dir / PID_FILE
        try:
            if pid.read_text().strip() == str(os.getpid()):
                pid.unlink()
        except OSError:
            pass  # never written (a test that drives step()) or already gone
        self.link.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.store.close()


def _cmd_serve(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        cfg = load_ground(Path(args.config))
        if args.insecure and not cfg.ground.insecure:
            cfg = _force_insecure(cfg)
        if args.role is not None and args.role != cfg.ground.role:
            cfg = dataclasses.replace(cfg, ground=dataclasses.replace(cfg.ground, role=args.role))
            check_role(cfg.ground, f"{args.config} (with --role {args.role}): ")
        shutdown = Shutdown().install()
        daemon: GroundDaemon | StationDaemon
        if cfg.ground.role == "station":
            daemon = StationDaemon(cfg, shutdown=shutdown, reload=Reload().install(), reset=args.reset_state)
        else:
            daemon = GroundDaemon(cfg, shutdown=shutdown, reload=Reload().install(), reset=args.reset_state)
    except (ConfigError, LinkError) as exc:
        print(f"orbitfl ground serve: {exc}", file=sys.stderr)
        return 2
    return daemon.run()


def _force_insecure(cfg: GroundSettings) -> GroundSettings:
    return dataclasses.replace(cfg, ground=dataclasses.replace(cfg.ground, insecure=True))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("ground", help="the ground station daemon")
    sub = p.add_subparsers(dest="ground_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="serve agents until SIGTERM")
    serve.add_argument("--config", required=True, help="the ground's TOML config")
    serve.add_argument(
        "--insecure", action="store_true", help="plaintext, no Curve keys: local development only"
    )
    serve.add_argument(
        "--reset-state",
        action="store_true",
        help="delete the federation stored in ground.state_dir and start a new one",
    )
    serve.add_argument(
        "--role",
        choices=ROLES,
        help="both (default: one daemon serves agents and aggregates), station (serves agents, relays "
        "to ground.upstream) or aggregator (serves stations); overrides ground.role",
    )
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=_cmd_serve)
    add_status_parser(sub)
    export.register(sub)
