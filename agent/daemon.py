"""The agent daemon: ``orbitfl agent run --config agent.toml``.

A thin shell around :class:`AgentMachine`: link events (up, down, frames) and a periodic tick go
in; sends, training jobs and new global models come out. The trainer runs between polls: the zoo's
models train an epoch on a board-sized partition in milliseconds, well inside the link's liveness.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad config or key, 1 for anything else that stops it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.agent.backends import open_trainer
from orbitfl.agent.learner import Learner, share_indices
from orbitfl.agent.machine import AgentConfig, AgentMachine
from orbitfl.agent.outbox import Outbox
from orbitfl.agent.strategy_side import PartialHint, PartialSender, capabilities, train_task
from orbitfl.codec.inputs import recipe_needs
from orbitfl.data.datasets import load
from orbitfl.data.metrics import accuracy
from orbitfl.data.partition_file import PartitionFileError, read_partition, write_partition
from orbitfl.models.manifest import Manifest, model_name, read_manifest
from orbitfl.runtime.config import AgentSettings, ConfigError, DataSection, load_agent
from orbitfl.runtime.events import (
    GROUND,
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
from orbitfl.runtime.link import AgentLink, Backoff, CurveClientKeys, Down, LinkError, Received, Up
from orbitfl.runtime.service import Notifier, Shutdown, serve, setup_logging

log = logging.getLogger("orbitfl.agent")

TICK_S = 0.25


def machine_config(cfg: AgentSettings, capabilities: Mapping[str, Any] | None = None) -> AgentConfig:
    """The one place the TOML settings become the machine's config (``*_s`` keys are seconds);
    ``capabilities``: what HELLO reports of the board's strategy side (Board.capabilities)."""
    a, lk = cfg.agent, cfg.link
    return AgentConfig(
        agent_id=a.name,
        heartbeat_seconds=max(5.0, lk.heartbeat_s * 5),
        retransmit_seconds=a.retransmit_s,
        chunk_bytes=lk.chunk_bytes,
        window=lk.window,
        capabilities=dict(capabilities or {}),
    )


class Board:
    """The board's learner, built from its TOML config: trains a task into an update and installs
    each new global model for onboard inference."""

    def __init__(self, cfg: AgentSettings) -> None:
        t = cfg.train
        art = (
            cfg.agent.artifacts or cfg.agent.state_dir / "artifacts" / f"{model_name(t.model)}-{t.optimizer}"
        )
        manifest = self._manifest(cfg, art)
        x, y = load_partition(cfg.data)
        if int(np.prod(x.shape[1:])) != int(np.prod(manifest.input_shape)):
            raise ConfigError(
                f"{cfg.data.file or cfg.data.dataset}: samples of shape {x.shape[1:]} do not fit "
                f"model {manifest.model!r}'s input {manifest.input_shape}"
            )
        self.learner = Learner(open_trainer(art, learning_rate=t.lr), x, y)
        self.cfg = t
        self.inference = cfg.inference
        self.dir = cfg.agent.state_dir
        self.budget_bytes = cfg.agent.uplink_budget_bytes
        self.agent_id = cfg.agent.name
        self.partial = PartialSender()

    def capabilities(self) -> dict[str, Any]:
        """EMS-FL's router affinity of the local data under the weights the board starts from."""
        return capabilities(self.learner.trainer.get_weights(), self.learner.x)

    @staticmethod
    def _manifest(cfg: AgentSettings, art: Path) -> Manifest:
        """The artifacts' manifest; built into ``art`` first unless agent.artifacts names them."""
        try:
            manifest = read_manifest(art)
        except (OSError, ValueError) as exc:
            if cfg.agent.artifacts is not None:
                raise ConfigError(f"agent.artifacts: {exc}") from None
            # Deferred on purpose: building needs onnx, the host's job, not a board's.
            from orbitfl.models.artifacts import build_artifacts
            from orbitfl.models.zoo import resolve

            return build_artifacts(resolve(cfg.train.model), art, optimizer=cfg.train.optimizer)
        if cfg.agent.artifacts is not None and manifest.model != model_name(cfg.train.model):
            raise ConfigError(
                f"agent.artifacts: {art} holds model {manifest.model!r}, but train.model is "
                f"{cfg.train.model!r} (the ground's federation.model)"
            )
        return manifest

    def train(self, start: StartTraining) -> TrainingDone:
        """One task, with its strategy's agent side (the simulator runs the same functions)."""
        hints = start.task.hints
        done = train_task(
            self.learner,
            self.agent_id,
            start.weights,
            hints,
            epochs=self.cfg.epochs,
            batch_size=self.cfg.batch_size,
            max_batches=self.cfg.max_batches or None,
            seed=start.task.round,
        )
        metrics = {k: v for k, v in done.metrics.items() if k != "loss"}
        metrics.update(loss=done.metrics["loss"], seconds=done.seconds)
        delta = done.delta
        needs_curvature, needs_budget = recipe_needs(start.task.recipe, delta)
        hint = PartialHint.parse(hints.get("partial"))
        # An adaptive (alq) recipe sizes the update to the budget itself.
        if hint is not None and not needs_budget:
            delta = self.partial.select(
                delta, hint, start.task.recipe, self.budget_bytes, self.learner.curvature(delta)
            )
        return TrainingDone(
            start.task.task_id,
            delta,
            done.samples,
            metrics,
            budget_bytes=self.budget_bytes,
            curvature=self.learner.curvature(delta) if needs_curvature else None,
        )

    def apply(self, model: ApplyModel) -> None:
        """Install a new global model for onboard inference: the ONNX next to the state and, when
        configured, a .tflite (float or int8) that LiteRT runs; logs its local accuracy."""
        if importlib.util.find_spec("onnx") is None:
            # A board without onnx (the usual case) keeps the model as its weights.
            save_weights(self.dir / "model.npz", model.weights)
            log.info("model v%d installed as %s (onnx is not installed here)", model.version, "model.npz")
            return
        # Deferred on purpose: the zoo needs onnx, which a board usually does not have.
        from orbitfl.models.zoo import resolve, write_inference_model

        spec = resolve(self.cfg.model)
        write_inference_model(spec, self.dir / "model.onnx", model.weights)
        if not self.inference.export_tflite:
            return
        # Deferred on purpose: the .tflite exporter and LiteRT are the optional litert extra.
        from orbitfl.agent.inference import OnboardModel
        from orbitfl.models.tflite import export_tflite

        int8 = self.inference.int8
        x = self.learner.x
        x = x.reshape((len(x), *spec.input_shape))
        path = export_tflite(
            spec.model,
            self.dir / "model.tflite",
            weights=model.weights,
            mode="int8" if int8 else "float",
            calibration=x[:128] if int8 else None,
        )
        acc = accuracy(OnboardModel(path).run(x)[0], self.learner.y)
        log.info(
            "model v%d exported to %s (%s); onboard accuracy on local data %.4f",
            model.version,
            path.name,
            "int8" if int8 else "float",
            acc,
        )


def load_partition(d: DataSection) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """This agent's samples and labels: the host-written file, or its share of a data set."""
    if d.file is not None:
        try:
            return read_partition(d.file)
        except PartitionFileError as exc:
            raise ConfigError(f"data.file: {exc}") from None
    data = load(d.dataset, seed=d.seed)
    idx = share_indices(data.y_train, d.num_partitions, d.split, alpha=d.alpha, seed=d.seed)[d.partition]
    return np.ascontiguousarray(data.x_train[idx], dtype=np.float32), data.y_train[idx]


def save_weights(path: Path, weights: Mapping[str, npt.ArrayLike]) -> None:
    """``weights`` as an .npz at ``path``, replaced atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    savez: Any = np.savez  # numpy's stub types **arrays as its allow_pickle keyword
    with open(tmp, "wb") as f:
        savez(f, **{k: np.asarray(v) for k, v in weights.items()})
    os.replace(tmp, path)


class AgentDaemon:
    def __init__(
        self,
        cfg: AgentSettings,
        *,
        shutdown: Shutdown | None = None,
        notifier: Notifier | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        board: Board | None = None,
    ) -> None:
        self.cfg = cfg
        self.shutdown = shutdown or Shutdown()
        self.notifier = notifier or Notifier()
        self.wall = wall
        self.mono = mono
        self.counts: Counter[str] = Counter()
        a, lk = cfg.agent, cfg.link
        a.state_dir.mkdir(parents=True, exist_ok=True)
        self.board = board or Board(cfg)
        self.outbox = Outbox(a.state_dir / "outbox.sqlite")
        self.machine = AgentMachine(self.outbox, machine_config(cfg, self.board.capabilities()))
        keys = None if a.insecure else CurveClientKeys(a.secret_key, a.ground_key)  # type: ignore[arg-type]
        self.link = AgentLink(
            a.ground,
            a.name,
            keys=keys,
            insecure=a.insecure,
            max_msg_size=lk.max_msg_size,
            heartbeat_s=lk.heartbeat_s,
            liveness=lk.liveness,
            backoff=Backoff(lk.backoff_initial_s, lk.backoff_max_s),
        )
        o = cfg.outages
        self._outage_rng = random.Random(o.seed)
        self._next_outage = self.mono() + self._outage_gap() if o.up_s > 0 and o.down_s > 0 else None
        self._next_tick = 0.0
        self._paced: list[tuple[float, TrainingDone | TrainingFailed]] = []

    def _outage_gap(self) -> float:
        up = self.cfg.outages.up_s
        return self._outage_rng.uniform(0.5 * up, 1.5 * up)

    def _feed(self, event: Event) -> None:
        pending: list[Event] = [event]
        while pending:
            ev = pending.pop(0)
            for a in self.machine.handle(ev, self.wall()):
                if isinstance(a, Send):
                    self.link.send(a.frame)  # while down it fails; the outbox keeps the update
                elif isinstance(a, StartTraining):
                    started = self.mono()
                    result = self._train(a)
                    pace = self.cfg.train.pace_s
                    if pace > 0:
                        self._paced.append((started + pace, result))
                    else:
                        pending.append(result)
                elif isinstance(a, ApplyModel):
                    try:
                        self.board.apply(a)
                    except (OSError, ValueError, TypeError, ImportError) as exc:
                        log.error("could not install model v%d: %s", a.version, exc)
                    self.counts["models_applied"] += 1
                elif isinstance(a, Log):
                    log.log(logging.getLevelName(a.level), "%s", a.text)
                elif isinstance(a, Count):
                    key = a.name + "".join(f"{{{k}={v}}}" for k, v in a.labels)
                    self.counts[key] += a.n

    def _train(self, a: StartTraining) -> TrainingDone | TrainingFailed:
        t0 = time.monotonic()
        try:
            done = self.board.train(a)
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            return TrainingFailed(a.task.task_id, f"{type(exc).__name__}: {exc}")
        log.info(
            "trained %s on %d samples in %.2f s (loss %.4f)",
            a.task.task_id,
            done.samples,
            time.monotonic() - t0,
            done.metrics.get("loss", float("nan")),
        )
        return done

    def step(self, timeout_s: float) -> None:
        now = self.mono()
        if self._next_outage is not None and now >= self._next_outage:
            down = self.cfg.outages.down_s
            log.info("outage: link cut for %.1f s", down)
            self.link.suspend(down)
            self._next_outage = now + down + self._outage_gap()
        for ev in self.link.poll(timeout_s):
            if isinstance(ev, Up):
                log.info("link up")
                self._feed(LinkUp())
            elif isinstance(ev, Down):
                log.info("link down after %.1f s of silence", ev.silent_s)
                self._feed(LinkDown())
            elif isinstance(ev, Received):
                self._feed(MessageReceived(GROUND, ev.frame))
        now = self.mono()
        due = [r for t, r in self._paced if t <= now]
        self._paced = [(t, r) for t, r in self._paced if t > now]
        for result in due:
            self._feed(result)
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            self._feed(Tick())
        self.notifier.watchdog(now)

    def run(self) -> int:
        self._next_tick = self.mono()
        mode = "plaintext (--insecure)" if not self.link.secure else "CurveZMQ"
        log.info(
            "agent %s (%s, Python %s) dialing %s (%s); %d update(s) in the outbox, holding model %s",
            self.cfg.agent.name,
            platform.machine(),
            platform.python_version(),
            self.cfg.agent.ground,
            mode,
            self.outbox.pending(),
            self.machine.version,
        )
        serve(
            self.notifier,
            self.shutdown,
            self.step,
            self.mono,
            ready=f"dialing {self.cfg.agent.ground}",
            tick_s=TICK_S,
            close=self.close,
        )
        log.info("agent stopped (signal %s)", self.shutdown.signal)
        return 0

    def close(self) -> None:
        self.link.close()
        self.outbox.close()


def _cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    try:
        cfg = load_agent(Path(args.config))
        if args.insecure and not cfg.agent.insecure:
            cfg = dataclasses.replace(cfg, agent=dataclasses.replace(cfg.agent, insecure=True))
        shutdown = Shutdown().install()
        daemon = AgentDaemon(cfg, shutdown=shutdown)
    except (ConfigError, LinkError) as exc:
        print(f"orbitfl agent run: {exc}", file=sys.stderr)
        return 2
    return daemon.run()


def _cmd_partition(args: argparse.Namespace) -> int:
    """On the host: write the share of the data this agent config selects, for the board."""
    try:
        cfg = load_agent(Path(args.config))
        if cfg.data.file is not None:
            raise ConfigError(f"{args.config}: data.file is set; this agent already reads {cfg.data.file}")
        x, y = load_partition(cfg.data)
    except (ConfigError, ImportError) as exc:
        print(f"orbitfl agent partition: {exc}", file=sys.stderr)
        return 2
    out = write_partition(args.out, x, y)
    print(
        f"{out}: {len(x)} samples of {cfg.data.dataset} (partition {cfg.data.partition} of "
        f"{cfg.data.num_partitions}, {cfg.data.split}); on the board set [data] file to it"
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("agent", help="the agent daemon that runs on a board")
    sub = p.add_subparsers(dest="agent_command", metavar="ACTION", required=True)
    run = sub.add_parser("run", help="learn and talk to the ground until SIGTERM")
    run.add_argument("--config", required=True, help="the agent's TOML config")
    run.add_argument(
        "--insecure", action="store_true", help="plaintext, no Curve keys: local development only"
    )
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_cmd_run)
    part = sub.add_parser(
        "partition", help="on the host: write this agent's share of the data as a file for the board"
    )
    part.add_argument("--config", required=True, help="the agent's TOML config (its [data] section)")
    part.add_argument("--out", required=True, help="the .npz to write (the board's data.file)")
    part.set_defaults(func=_cmd_partition)
