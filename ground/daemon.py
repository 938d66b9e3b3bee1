"""The ground daemon: ``orbitfl ground serve --config ground.toml``.

A thin shell: the link's frames and real time go into :class:`GroundMachine` as events, and its
actions come out as sends, log lines, metrics and round reports. No federation logic lives here.
The machine is given wall time (its deadlines are stored and must survive a restart); the link and
the loop use ``time.monotonic()``.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad config or key, 1 for anything else that stops it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.codec.inputs import check_recipe
from orbitfl.data.datasets import load
from orbitfl.data.metrics import accuracy
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.metrics import GroundMetrics, MetricsServer
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import STRATEGIES, Strategy, make_strategy
from orbitfl.models import zoo
from orbitfl.ort_import import onnxruntime
from orbitfl.runtime.config import ConfigError, GroundSettings, load_ground
from orbitfl.runtime.events import Count, Gauge, Log, MessageReceived, PeerSilent, RoundClosed, Send, Tick
from orbitfl.runtime.link import CurveServerKeys, GroundLink, LinkError
from orbitfl.runtime.service import Notifier, Shutdown, serve, setup_logging

log = logging.getLogger("orbitfl.ground")

TICK_S = 0.25
ROUNDS_FILE = "rounds.jsonl"


def initial_weights(model: str, seed: int) -> dict[str, npt.NDArray[Any]]:
    return zoo.get_weights(zoo.resolve(model, seed=seed).model)


def _where(cfg: GroundSettings) -> str:
    return f"{cfg.source}: " if cfg.source is not None else ""


def machine_config(cfg: GroundSettings) -> GroundConfig:
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
        )
    except ValueError as exc:
        raise ConfigError(f"{_where(cfg)}federation: {exc}") from None


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

    def __init__(self, model: str, seed: int, dataset: str, data_seed: int) -> None:
        self._ort = onnxruntime()
        self.spec = zoo.resolve(model, seed=seed)
        data = load(dataset, seed=data_seed)
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
    ) -> None:
        self.cfg = cfg
        self.shutdown = shutdown or Shutdown()
        self.notifier = notifier or Notifier()
        self.wall = wall
        self.mono = mono
        self.metrics = GroundMetrics()
        g, fed = cfg.ground, cfg.federation
        g.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = GroundStore(g.state_dir)
        self.n_params = 0
        init = None
        if self.store.latest_version() is None:
            init = initial_weights(fed.model, fed.model_seed)
        mcfg = machine_config(cfg)
        self.machine = GroundMachine(self.store, mcfg, init, build_strategy(cfg))
        self.n_params = sum(int(v.size) for v in self.machine.global_model.values())
        self.evaluator = (
            Evaluator(fed.model, fed.model_seed, fed.eval_dataset, fed.data_seed)
            if fed.eval_dataset
            else None
        )
        keys = None if g.insecure else CurveServerKeys(g.secret_key, g.allowed_keys)  # type: ignore[arg-type]
        self.link = GroundLink(
            g.bind,
            keys=keys,
            insecure=g.insecure,
            max_msg_size=cfg.link.max_msg_size,
            heartbeat_s=cfg.link.heartbeat_s,
        )
        self.metrics_server = MetricsServer(self.metrics, g.metrics) if g.metrics else None
        self._silent: set[str] = set()
        self._next_tick = 0.0
        self._auth_seen = 0
        self.metrics.model_version = self.machine.version
        self.metrics.round = self.machine.round

    # --- actions ----------------------------------------------------------------------------------

    def _execute(self, actions: list[Any]) -> None:
        m = self.metrics
        for a in actions:
            if isinstance(a, Send):
                self.link.send(a.peer, a.frame)  # a failed send is retried by the machine
            elif isinstance(a, Log):
                log.log(logging.getLevelName(a.level), "%s", a.text)
            elif isinstance(a, Count):
                labels = dict(a.labels)
                with m.lock:
                    if a.name == "updates_accepted":
                        m.updates_accepted += a.n
                    elif a.name == "refused":
                        m.updates_refused[labels.get("reason", "unknown")] += a.n
                    elif a.name == "updates_duplicate":
                        m.updates_refused["duplicate"] += a.n
            elif isinstance(a, Gauge):
                if a.name.startswith("strategy_"):
                    with m.lock:
                        m.strategy[a.name[len("strategy_") :]] = float(a.value)
                elif a.name == "round":
                    m.round = int(a.value)
                elif a.name == "model_version":
                    m.model_version = int(a.value)
            elif isinstance(a, RoundClosed):
                self._report_round(a)

    def _report_round(self, rc: RoundClosed) -> None:
        acc = None
        if self.evaluator is not None:
            acc = self.evaluator.accuracy(self.machine.global_model)
        row = {
            "round": rc.round,
            "version": rc.version,
            "updates": rc.updates,
            "samples": rc.samples,
            "uplink_bytes": rc.uplink_bytes,
            # What the same updates cost as raw float32 tensors (the FedAvg baseline).
            "float32_bytes": rc.updates * self.n_params * 4,
            "accuracy": acc,
            "time": self.wall(),
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
        for r in self.link.poll(timeout_s):
            self._silent.discard(r.peer)
            self.metrics.agents_seen.add(r.peer)
            self._execute(self.machine.handle(MessageReceived(r.peer, r.frame), self.wall()))
        now = self.mono()
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            self._execute(self.machine.handle(Tick(), self.wall()))
            # A peer silent past liveness is reported once; its pending work stays with the machine.
            limit = self.cfg.link.heartbeat_s * self.cfg.link.liveness
            for peer, seen in self.link.last_seen.items():
                if peer not in self._silent and now - seen > limit:
                    self._silent.add(peer)
                    self._execute(self.machine.handle(PeerSilent(peer), self.wall()))
        st = self.link.stats
        with self.metrics.lock:
            self.metrics.bytes_in, self.metrics.bytes_out = st.bytes_in, st.bytes_out
            self.metrics.frames_in, self.metrics.frames_out = st.frames_in, st.frames_out
            if st.auth_failures > self._auth_seen:
                self.metrics.updates_refused["unknown_key"] += st.auth_failures - self._auth_seen
                self._auth_seen = st.auth_failures
        self.notifier.watchdog(now)

    def run(self) -> int:
        self._next_tick = self.mono()
        mode = "plaintext (--insecure)" if not self.link.secure else "CurveZMQ"
        log.info(
            "ground serving on %s (%s), model v%d, round %d",
            self.link.endpoint,
            mode,
            self.machine.version,
            self.machine.round,
        )
        if self.metrics_server is not None:
            log.info(
                "metrics on http://%s:%d/metrics",
                self.cfg.ground.metrics.rpartition(":")[0],
                self.metrics_server.port,
            )
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

    def close(self) -> None:
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
        shutdown = Shutdown().install()
        daemon = GroundDaemon(cfg, shutdown=shutdown)
    except (ConfigError, LinkError) as exc:
        print(f"orbitfl ground serve: {exc}", file=sys.stderr)
        return 2
    return daemon.run()


def _force_insecure(cfg: GroundSettings) -> GroundSettings:
    import dataclasses

    return dataclasses.replace(cfg, ground=dataclasses.replace(cfg.ground, insecure=True))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("ground", help="the ground station daemon")
    sub = p.add_subparsers(dest="ground_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="serve agents until SIGTERM")
    serve.add_argument("--config", required=True, help="the ground's TOML config")
    serve.add_argument(
        "--insecure", action="store_true", help="plaintext, no Curve keys: local development only"
    )
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=_cmd_serve)
