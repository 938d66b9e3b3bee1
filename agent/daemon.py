"""The agent daemon: ``orbitfl agent run --config agent.toml``.

A thin shell around :class:`AgentMachine`: link events (up, down, frames) and a periodic tick go
in; sends, training jobs and new global models come out. The trainer runs between polls: the zoo's
models train an epoch on a board-sized partition in milliseconds, well inside the link's liveness.

Exit codes: 0 after SIGTERM/SIGINT, 2 for a bad config or key, 1 for anything else that stops it.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
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
from orbitfl.agent.metrics import AgentMetrics, AgentMetricsServer
from orbitfl.agent.status import LAST_CONTACT_KEY
from orbitfl.agent.status import add_parser as add_status_parser
from orbitfl.agent.strategy_side import PartialHint, PartialSender, capabilities, train_task
from orbitfl.codec.inputs import recipe_needs
from orbitfl.data.datasets import Dataset
from orbitfl.data.metrics import accuracy
from orbitfl.data.partition_file import PartitionFileError, read_partition, write_partition
from orbitfl.data.user_data import DataError, check_fits, load_source
from orbitfl.models.manifest import Manifest, model_name, read_manifest
from orbitfl.runtime.config import AgentSettings, ConfigError, DataSection, load_agent, prepare_state_dir
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
from orbitfl.runtime.link import (
    AgentLink,
    Backoff,
    CurveClientKeys,
    Down,
    KeyRefused,
    LinkError,
    Received,
    Up,
    load_public,
    load_secret,
)
from orbitfl.runtime.observe import Health
from orbitfl.runtime.outbox import Outbox
from orbitfl.runtime.service import LogLimiter, Notifier, Shutdown, serve, setup_logging

log = logging.getLogger("orbitfl.agent")

TICK_S = 0.25


def machine_config(
    cfg: AgentSettings,
    model_fingerprint: str | None = None,
    capabilities: Mapping[str, Any] | None = None,
) -> AgentConfig:
    """The one place the TOML settings become the machine's config (``*_s`` keys are seconds);
    ``capabilities``: what HELLO reports of the board's strategy side (Board.capabilities)."""
    a, lk = cfg.agent, cfg.link
    return AgentConfig(
        agent_id=a.name,
        heartbeat_seconds=max(5.0, lk.heartbeat_s * 5),
        retransmit_seconds=a.retransmit_s,
        chunk_bytes=lk.chunk_bytes,
        window=lk.window,
        model_fingerprint=model_fingerprint or None,
        capabilities=dict(capabilities or {}),
    )


def artifacts_dir(cfg: AgentSettings) -> Path:
    """Where the agent keeps the artifacts it builds itself: one folder per model, optimizer and
    choice of trainable parameters, so changing any of them never reuses a stale build."""
    t = cfg.train
    name = f"{model_name(t.model)}-{t.optimizer}"
    if t.trainable:
        name += "-" + hashlib.sha256("\n".join(t.trainable).encode()).hexdigest()[:8]
    return cfg.agent.state_dir / "artifacts" / name


CONTROL_FILE = "scaffold_control.npz"  # SCAFFOLD's cᵢ of the board, beside its outbox


class Board:
    """The board's learner, built from its TOML config: trains a task into an update and installs
    each new global model for onboard inference."""

    def __init__(self, cfg: AgentSettings) -> None:
        t = cfg.train
        art = cfg.agent.artifacts or artifacts_dir(cfg)
        manifest = self._manifest(cfg, art)
        self.fingerprint = manifest.fingerprint
        x, y = load_partition(cfg.data, manifest)
        self.learner = Learner(open_trainer(art, learning_rate=t.lr), x, y)
        self.cfg = t
        self.inference = cfg.inference
        self.dir = cfg.agent.state_dir
        self.budget_bytes = cfg.agent.uplink_budget_bytes
        self.agent_id = cfg.agent.name
        self.partial = PartialSender()

    def _control(self) -> dict[str, np.ndarray] | None:
        """SCAFFOLD's cᵢ of this board, kept in its state folder across reboots (None: none yet)."""
        path = Path(self.dir) / CONTROL_FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{path}: unreadable SCAFFOLD control variate ({exc}); remove it to start over"
            ) from None

    def _keep_control(self, control: Mapping[str, np.ndarray]) -> None:
        path = Path(self.dir) / CONTROL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        arrays: dict[str, Any] = {k: np.asarray(v, np.float32) for k, v in control.items()}
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

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
            manifest = None
        if cfg.agent.artifacts is None and (manifest is None or Board._changed(cfg, manifest)):
            # Deferred on purpose: building needs onnx, the host's job, not a board's.
            from orbitfl.models.artifacts import build_artifacts
            from orbitfl.models.zoo import resolve

            try:
                return build_artifacts(
                    resolve(cfg.train.model),
                    art,
                    optimizer=cfg.train.optimizer,
                    trainable=list(cfg.train.trainable) or None,
                )
            except ValueError as exc:
                where = f"{cfg.source}: " if cfg.source is not None else ""
                raise ConfigError(f"{where}train.model: {exc}") from None
        assert manifest is not None
        if cfg.agent.artifacts is not None and manifest.model != model_name(cfg.train.model):
            raise ConfigError(
                f"agent.artifacts: {art} holds model {manifest.model!r}, but train.model is "
                f"{cfg.train.model!r} (the ground's federation.model)"
            )
        return manifest

    @staticmethod
    def _changed(cfg: AgentSettings, manifest: Manifest) -> bool:
        """Whether the model file behind a build made here has changed since (same name, other
        graph): then the build is stale. Without onnx it cannot be told, and is kept."""
        if not manifest.fingerprint or importlib.util.find_spec("onnx") is None:
            return False
        from orbitfl.models.zoo import fingerprint, resolve  # deferred: onnx, see above

        try:
            return fingerprint(resolve(cfg.train.model)) != manifest.fingerprint
        except ValueError as exc:
            raise ConfigError(f"train.model: {exc}") from None

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
            control=self._control(),
        )
        if done.mean_gradient is not None:
            self._keep_control(done.mean_gradient)
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
            log.debug("model v%d installed as %s (onnx is not installed here)", model.version, "model.npz")
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
        log.debug(
            "model v%d exported to %s (%s); onboard accuracy on local data %.4f",
            model.version,
            path.name,
            "int8" if int8 else "float",
            acc,
        )


def load_partition(
    d: DataSection, manifest: Manifest | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
    """This agent's samples and labels: the host-written file, or its share of a data set (built
    in, or the user's own); refused with a ConfigError when they do not fit ``manifest``'s model."""
    key = "data.file" if d.file is not None else "data.dataset"
    try:
        if d.file is not None:
            x, y = read_partition(d.file)
            data = Dataset(
                str(d.file), x, y, x[:0], y[:0], tuple(x.shape[1:]), 0, info={"source": str(d.file)}
            )
        else:
            data = load_source(d.dataset, seed=d.seed)
        if manifest is not None:
            check_fits(data, manifest.input_shape, manifest.num_outputs, task=manifest.task)
    except (PartitionFileError, DataError, ImportError) as exc:
        raise ConfigError(f"{key}: {exc}") from None
    if d.file is not None:
        return data.x_train, data.y_train
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
        try:
            self.notifier = notifier or Notifier()
        except ValueError as exc:  # NOTIFY_SOCKET / WATCHDOG_USEC as systemd (or a wrapper) set them
            raise ConfigError(f"environment: {exc}; fix the unit's or the caller's environment") from None
        self.wall = wall
        self.mono = mono
        self.counts: Counter[str] = Counter()
        self.log_limiter = LogLimiter()
        a = cfg.agent
        where = f"{cfg.source}: " if cfg.source is not None else ""
        prepare_state_dir(a.state_dir, f"{where}agent.state_dir")
        keys = None if a.insecure else CurveClientKeys(a.secret_key, a.ground_key)  # type: ignore[arg-type]
        # The ground, then the other stations of a ground network, in the order they are visited.
        self._grounds: list[tuple[str, CurveClientKeys | None]] = [(a.ground, keys)]
        for i, endpoint in enumerate(a.stations):
            skeys = None if keys is None else CurveClientKeys(keys.secret_file, Path(a.station_keys[i]))
            self._grounds.append((endpoint, skeys))
        self._at = 0
        self._pass_over = False
        if keys is not None:  # read here too, so that an error names its key
            checks = [
                ("secret_key", load_secret, keys.secret_file),
                ("ground_key", load_public, keys.server_public_file),
            ]
            checks += [("station_keys", load_public, Path(k)) for k in a.station_keys]
            for key, read, path in checks:
                try:
                    read(path)
                except LinkError as exc:
                    raise ConfigError(
                        f"{where}agent.{key}: {exc}; make keys with `orbitfl keys new` "
                        "(docs/operations.md, section 2)"
                    ) from None
        self.outbox = Outbox(a.state_dir / "outbox.sqlite")
        try:
            self.board = board or Board(cfg)
        except BaseException:
            self.outbox.close()
            raise
        self.machine = AgentMachine(
            self.outbox,
            machine_config(cfg, getattr(self.board, "fingerprint", None), self.board.capabilities()),
        )
        learner = getattr(self.board, "learner", None)
        if learner is not None:  # the ground caps each update's weight at what we register
            self.machine.cfg.capabilities["max_samples"] = len(learner.x) * cfg.train.epochs
        self.link = self._make_link(0)
        self.metrics = AgentMetrics()
        self.health = Health(mono, stale_s=max(10.0, 20 * TICK_S))
        self.metrics_server: AgentMetricsServer | None = None
        if a.metrics:
            try:
                self.metrics_server = AgentMetricsServer(self.metrics, a.metrics, self.health)
            except OSError as exc:
                self.link.close()
                self.outbox.close()
                raise ConfigError(
                    f"{cfg.source or 'config'}: agent.metrics: cannot listen on {a.metrics}: "
                    f"{exc.strerror or exc}"
                ) from None
        self._status = ""
        o = cfg.outages
        self._outage_rng = random.Random(o.seed)
        self._next_outage = self.mono() + self._outage_gap() if o.up_s > 0 and o.down_s > 0 else None
        self._next_tick = 0.0
        self._paced: list[tuple[float, TrainingDone | TrainingFailed]] = []

    def _make_link(self, i: int) -> AgentLink:
        a, lk = self.cfg.agent, self.cfg.link
        endpoint, keys = self._grounds[i]
        return AgentLink(
            endpoint,
            a.name,
            keys=keys,
            insecure=a.insecure,
            max_msg_size=lk.max_msg_size,
            heartbeat_s=lk.heartbeat_s,
            liveness=lk.liveness,
            backoff=Backoff(lk.backoff_initial_s, lk.backoff_max_s),
            refused_backoff_s=a.key_refused_retry_s,
        )

    def _move_on(self) -> None:
        """A ground network: the pass over this station is over; dial the next one."""
        if self.link.up:
            self._feed(LinkDown())
        self.link.close()
        self._at = (self._at + 1) % len(self._grounds)
        self.link = self._make_link(self._at)
        log.info("moving on to station %s", self._grounds[self._at][0])

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
                    # Quiet by default: the machine's routine steps are detail (-v); one line per
                    # round comes from _train, and warnings and errors always show.
                    level = logging.getLevelName(a.level)
                    line = self.log_limiter.line(a.key, a.text, self.mono())
                    if line is not None:
                        log.log(logging.DEBUG if level == logging.INFO else level, "%s", line)
                elif isinstance(a, Count):
                    if a.name == "updates_acked":
                        self._pass_over = True
                    key = a.name + "".join(f"{{{k}={v}}}" for k, v in a.labels)
                    self.counts[key] += a.n
                    with self.metrics.lock:
                        self.metrics.events[(a.name, a.labels)] += a.n

    def _train(self, a: StartTraining) -> TrainingDone | TrainingFailed:
        t0 = time.monotonic()
        try:
            done = self.board.train(a)
        except (ValueError, TypeError, RuntimeError, OSError) as exc:
            return TrainingFailed(a.task.task_id, f"{type(exc).__name__}: {exc}")
        with self.metrics.lock:
            self.metrics.rounds_trained += 1
        log.info(
            "round %d: trained %s on model v%d, %d samples in %.2f s (loss %.4f); %d update(s) waiting",
            a.task.round,
            a.task.task_id,
            a.task.model_version,
            done.samples,
            time.monotonic() - t0,
            done.metrics.get("loss", float("nan")),
            self.outbox.pending(),
        )
        return done

    def step(self, timeout_s: float) -> None:
        now = self.mono()
        if self._next_outage is not None and now >= self._next_outage:
            down = self.cfg.outages.down_s
            log.debug("outage: link cut for %.1f s", down)
            self.link.suspend(down)
            self._next_outage = now + down + self._outage_gap()
        for ev in self.link.poll(timeout_s):
            if isinstance(ev, Up):
                # Contacts are the events of a board's life (one per pass over a station): kept.
                log.info("link up")
                self._contact()
                self._feed(LinkUp())
            elif isinstance(ev, Down):
                log.info("link down after %.1f s of silence", ev.silent_s)
                self._contact()
                self._feed(LinkDown())
                self._pass_over = True
            elif isinstance(ev, KeyRefused):
                with self.metrics.lock:
                    self.metrics.key_refused += 1
                log.warning(
                    "the ground refused this agent's key %s (revoked or not in its allow-list); "
                    "dialling again in %.0f s",
                    self._public_key(),
                    ev.retry_s,
                )
            elif isinstance(ev, Received):
                self._feed(MessageReceived(GROUND, ev.frame))
        if self._pass_over:
            self._pass_over = False
            if len(self._grounds) > 1:
                self._move_on()
        now = self.mono()
        due = [r for t, r in self._paced if t <= now]
        self._paced = [(t, r) for t, r in self._paced if t > now]
        for result in due:
            self._feed(result)
        if now >= self._next_tick:
            self._next_tick = now + TICK_S
            self._feed(Tick())
            self._observe(now)
        self.health.tick()
        self.notifier.watchdog(now)

    def _public_key(self) -> str:
        a = self.cfg.agent
        if a.insecure or a.secret_key is None:
            return "(none: plaintext)"
        try:
            return load_secret(a.secret_key)[0].decode("ascii", "replace")
        except LinkError:
            return f"in {a.secret_key}"

    def _contact(self) -> None:
        """Remember when the ground was last heard from, for `orbitfl agent status` (per link event,
        not per frame: a board's storage is not for a write every heartbeat)."""
        heard = self.wall() - max(0.0, self.mono() - self.link.last_heard)
        self.outbox.set(LAST_CONTACT_KEY, repr(heard).encode())

    def _observe(self, now: float) -> None:
        """Per tick: the link and outbox figures for the metrics and STATUS= for systemd."""
        st = self.link.stats
        pending = self.outbox.pending()
        up = self.link.up
        with self.metrics.lock:
            m = self.metrics
            m.link_up = up
            m.outbox = pending
            m.model_version = self.machine.version
            m.bytes_in, m.bytes_out, m.reconnects = st.bytes_in, st.bytes_out, st.reconnects
            if up:
                m.last_contact = self.wall() - max(0.0, now - self.link.last_heard)
        held = "no model" if self.machine.version is None else f"model v{self.machine.version}"
        status = f"{'linked' if up else 'not linked'}, {held}, {pending} update(s) in the outbox"
        if status != self._status:
            self._status = status
            self.notifier.status(status)

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
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
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
    add_status_parser(sub)
    part = sub.add_parser(
        "partition", help="on the host: write this agent's share of the data as a file for the board"
    )
    part.add_argument("--config", required=True, help="the agent's TOML config (its [data] section)")
    part.add_argument("--out", required=True, help="the .npz to write (the board's data.file)")
    part.set_defaults(func=_cmd_partition)
