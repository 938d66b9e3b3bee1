"""A satellite's training job as a pure function, so any worker can run it: the simulator's seam to
an executor (:mod:`orbitfl.apps.executors`).

A job carries what the board would hold (the task's weights, its optimizer state) and names the
satellite's share of the data by index; a worker builds the data split, the model and one trainer
once per :class:`TrainSetup` (a :class:`Workbench`) and trains every satellite's jobs with it,
putting each satellite's optimizer state in before and taking it out after. So the loop keeps per
satellite only that state (Adam's moments), never a model or an ONNX Runtime session, and the
outcome is the same bits whichever process computes it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from orbitfl.agent.backends import open_trainer
from orbitfl.agent.learner import Learner, share_indices
from orbitfl.agent.strategy_side import train_task
from orbitfl.agent.train_loop import StepTrainer
from orbitfl.data.datasets import Dataset, load
from orbitfl.data.user_data import check_fits, load_source

if TYPE_CHECKING:
    from orbitfl.models.zoo import ModelSpec


CONTROL_KEY = "scaffold_control"  # a satellite's SCAFFOLD cᵢ, in its per-job state


@dataclass(frozen=True)
class TrainSetup:
    """What decides the data split, the model and the trainer (hashable: a worker's cache key)."""

    dataset: str
    mnist_path: str | None
    seed: int
    model: str
    model_options: str  # JSON, sorted keys
    partition: str
    alpha: float
    shards_per_client: int
    n_agents: int
    lr: float | None
    epochs: int
    batch_size: int
    artifacts: str  # the simulator's training artifacts; a worker that cannot see them builds its own
    trainable: tuple[str, ...] | None = None  # which float initializers train (None: all)


@dataclass(frozen=True)
class TrainJob:
    setup: TrainSetup
    agent: int
    agent_id: str
    round: int
    weights: Mapping[str, npt.NDArray[Any]]
    hints: Mapping[str, Any]
    state: Mapping[str, Any] | None  # the satellite's optimizer state before this job (None: fresh)


@dataclass
class TrainOutcome:
    delta: dict[str, npt.NDArray[Any]]
    samples: int
    metrics: dict[str, float]
    state: dict[str, Any]  # the optimizer state after the job, for the satellite's next one


def stateful(trainer: StepTrainer) -> Any:
    """The trainer's optimizer-state accessors (the stock ONNX Runtime backend has them)."""
    if not (hasattr(trainer, "optimizer_state") and hasattr(trainer, "load_optimizer_state")):
        raise ValueError(
            f"the simulator needs the 'onnxruntime' trainer backend, not {type(trainer).__name__}"
        )
    return trainer


class Workbench:
    """Data split, model spec, training artifacts and one trainer for a :class:`TrainSetup`."""

    def __init__(self, setup: TrainSetup, art: Path, *, prebuilt: bool = False) -> None:
        """``prebuilt``: open the artifacts in ``art`` instead of building the model and them (a
        worker on the simulator's machine: no onnx import, no graph derivation)."""
        self.setup = setup
        if setup.dataset == "mnist":
            data = load("mnist", path=setup.mnist_path)
        else:
            data = load_source(setup.dataset, seed=setup.seed)  # a built-in name or the user's data
        self.data: Dataset = data
        y = data.y_train
        split = "iid" if data.task != "classification" else setup.partition
        shares = share_indices(
            y,
            setup.n_agents,
            split,
            alpha=setup.alpha,
            shards_per_client=setup.shards_per_client,
            seed=setup.seed,
        )
        # One copy of the training set, ordered satellite by satellite, each share a view into it;
        # the loaded order is then dropped (nothing reads it), so the split costs no second copy
        # of the data set per simulation. A share's rows and their order are what x_train[p] gave.
        order = np.concatenate(shares) if shares else np.zeros(0, np.int64)
        x_all = np.ascontiguousarray(data.x_train[order], np.float32)
        y_all = y[order]
        ends = np.cumsum([len(p) for p in shares]).tolist()
        self.parts = [(x_all[a:b], y_all[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        data = replace(data, x_train=x_all, y_train=y_all)
        self.data = data
        self.art = art
        self._spec: ModelSpec | None = None
        if not prebuilt:
            opts = dict(json.loads(setup.model_options))
            if setup.model in ("mlp", "moe", "lenet-s") and "input" not in opts:
                opts["input"] = "x".join(map(str, data.sample_shape))
            if setup.model == "spectral-cnn" and "input" not in opts:
                opts["input"] = int(np.prod(data.sample_shape))
            # Deferred: building a model and its graphs imports onnx, which a worker opening
            # prebuilt artifacts never needs (it is most of a worker's start-up).
            from orbitfl.models.artifacts import build_artifacts
            from orbitfl.models.manifest import is_model_path
            from orbitfl.models.zoo import build, load_user_model

            if is_model_path(setup.model):
                if json.loads(setup.model_options):
                    raise ValueError(f"model_options apply to zoo models only, not to {setup.model}")
                self._spec = load_user_model(setup.model)
            else:
                self._spec = build(setup.model, seed=setup.seed, **opts)
            check_fits(data, self._spec.input_shape, self._spec.num_outputs, task=self._spec.task)
            build_artifacts(self._spec, art, trainable=list(setup.trainable) if setup.trainable else None)
        self.trainer = self.new_trainer()

    @property
    def spec(self) -> ModelSpec:
        if self._spec is None:
            raise RuntimeError("this workbench opened prebuilt artifacts and holds no model spec")
        return self._spec

    def new_trainer(self) -> StepTrainer:
        return open_trainer(self.art, learning_rate=self.setup.lr)

    def train(self, job: TrainJob) -> TrainOutcome:
        trainer = stateful(self.trainer)
        trainer.load_optimizer_state(job.state)
        seed = int.from_bytes(
            hashlib.blake2b(f"{self.setup.seed}:{job.agent}:{job.round}".encode(), digest_size=4).digest(),
            "little",
        )
        # The strategy's agent side (EMS-FL's experts only, FedProx's term) is the agent daemon's.
        done = train_task(
            Learner(trainer, *self.parts[job.agent]),
            job.agent_id,
            job.weights,
            job.hints,
            epochs=self.setup.epochs,
            batch_size=self.setup.batch_size,
            seed=seed,
            control=None if job.state is None else job.state.get(CONTROL_KEY),
        )
        state = trainer.optimizer_state()
        if done.mean_gradient is not None:  # SCAFFOLD: the satellite's cᵢ, kept with its optimizer
            state[CONTROL_KEY] = done.mean_gradient
        elif job.state is not None and CONTROL_KEY in job.state:
            state[CONTROL_KEY] = job.state[CONTROL_KEY]
        return TrainOutcome(done.delta, done.samples, done.metrics, state)


_BENCHES: dict[TrainSetup, Workbench] = {}


def register(bench: Workbench) -> None:
    """Make ``bench`` the one this process uses for its setup (the local executor runs jobs in the
    simulator's own process, which has built it already)."""
    _BENCHES.clear()
    _BENCHES[bench.setup] = bench


def forget(setup: TrainSetup) -> None:
    _BENCHES.pop(setup, None)


def _worker_bench(setup: TrainSetup) -> Workbench:
    bench = _BENCHES.get(setup)
    if bench is None and (Path(setup.artifacts) / "manifest.json").is_file():
        bench = Workbench(setup, Path(setup.artifacts), prebuilt=True)
        register(bench)
    if bench is None:
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        folder = tempfile.mkdtemp(prefix="orbitfl-worker-", dir=shm)
        atexit.register(shutil.rmtree, folder, True)
        # A worker serves one simulation at a time; a new setup replaces the old bench.
        bench = Workbench(setup, Path(folder) / "artifacts")
        register(bench)
    return bench


def prepare(setup: TrainSetup) -> None:
    """A worker's one-time set-up for ``setup`` (data split, trainer), ahead of its first job."""
    _worker_bench(setup)


def run_training(job: TrainJob) -> TrainOutcome:
    """The function executors run: one satellite's training job."""
    return _worker_bench(job.setup).train(job)
