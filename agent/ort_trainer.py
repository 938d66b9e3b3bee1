"""The ONNX Runtime on-device training backend of :class:`orbitfl.agent.trainer.Trainer`.

Loads an artifact directory written by ``orbitfl model build`` (training, eval and optimizer graphs,
checkpoint, manifest) and trains with ``onnxruntime.training.api`` imported the torch-free way
(:mod:`orbitfl.ort_import`). Needs onnxruntime-training 1.19.2 (x86-64, CPython 3.10/3.11).

The optimizer's second moments (Adam's v, the curvature LAQ needs) are read exactly from an ORT
checkpoint saved with its optimizer state (:mod:`orbitfl.agent.ort_checkpoint`). SGD keeps no
second moment, so for SGD this backend tracks a documented substitute: an Adam-style running mean of
squared gradients (beta2 = 0.999, bias-corrected), updated from the gradients after each backward.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orbitfl.agent.ort_checkpoint import read_optimizer_state
from orbitfl.agent.train_loop import CHECKPOINT_NAME, StepTrainer, check_learning_rate
from orbitfl.agent.trainer import CheckpointError
from orbitfl.models.manifest import FILES, Manifest, check_weights, read_manifest
from orbitfl.ort_import import onnxruntime, training_api

__all__ = ["CHECKPOINT_NAME", "DEFAULT_LR", "OrtTrainer"]

STATE_FORMAT = "orbitfl-ort-trainer/1"
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}
SQ_BETA = 0.999

StepFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class _Steps:
    """Train, eval and optimizer steps that call ORT's pybind objects directly.

    ``onnxruntime.training.api.Module.__call__`` costs about 45 us a step in Python on top of the
    work (measured on the digits ``mlp``: 5.3 ms of CPU per epoch through it, 3.1 ms calling the
    pybind ``Module`` directly). Most of it is iterating the ``OrtValueVector`` of outputs: the
    iteration ends in a C++ ``std::out_of_range`` turned into ``IndexError`` (23 us; indexing the
    two outputs takes 1.6 us). That was about 40 % of an mlp epoch.
    The wrapper's private ``_model`` and ``_optimizer`` are stable in 1.19.2, the last training
    wheel; without them this falls back to the public calls."""

    def __init__(self, module: Any, optimizer: Any) -> None:
        core: Any = getattr(module, "_model", None)
        opt: Any = getattr(optimizer, "_optimizer", None)
        vector = getattr(
            sys.modules.get("onnxruntime.capi.onnxruntime_pybind11_state"), "OrtValueVector", None
        )
        if (
            all(hasattr(core, a) for a in ("train_step", "eval_step", "lazy_reset_grad"))
            and hasattr(opt, "optimizer_step")
            and vector is not None
        ):

            def run(step: Callable[[list[np.ndarray], Any], None]) -> StepFn:
                def call(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                    fetches = vector()
                    step([x, y], fetches)
                    return fetches[0].numpy(), fetches[1].numpy()

                return call

            self.train, self.eval = run(core.train_step), run(core.eval_step)
            self.optimizer_step: Callable[[], None] = opt.optimizer_step
            self.reset_grad: Callable[[], None] = core.lazy_reset_grad
            return

        def public(training: bool) -> StepFn:
            def call(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                module.train(training)
                loss, out = module(x, y)
                return loss, out

            return call

        self.train, self.eval = public(True), public(False)
        self.optimizer_step, self.reset_grad = optimizer.step, module.lazy_reset_grad


class OrtTrainer(StepTrainer):
    STATE_FORMAT = STATE_FORMAT

    def __init__(
        self, artifacts_dir: str | Path, *, learning_rate: float | None = None, threads: int = 1
    ) -> None:
        """``threads`` is ORT's intra-op thread count; 1 keeps results bit-reproducible across a
        resume and is fastest for the zoo's small models on a board."""
        self._dir = Path(artifacts_dir)
        self.manifest: Manifest = read_manifest(self._dir)
        for key in ("training", "eval", "optimizer", "checkpoint"):
            if not (self._dir / FILES[key]).is_file():
                raise ValueError(f"{self._dir}: missing {FILES[key]}; rebuild with `orbitfl model build`")
        ort = onnxruntime()
        ort.set_default_logger_severity(3)  # ORT logs every graph transform at info level otherwise
        self._api = training_api()
        self._options = ort.SessionOptions()
        self._options.intra_op_num_threads = int(threads)
        self._options.inter_op_num_threads = 1
        self._learning_rate = check_learning_rate(
            DEFAULT_LR[self.manifest.optimizer] if learning_rate is None else learning_rate
        )
        self._sq: dict[str, np.ndarray] = {}  # SGD substitute for Adam's v
        self._sq_steps = 0
        self._attach(self._api.CheckpointState.load_checkpoint(str(self._dir / FILES["checkpoint"])))
        names = [n for n, _ in self._state.parameters]
        expected = set(self.manifest.parameters)
        if set(names) != expected:
            raise ValueError(f"{self._dir}: checkpoint parameters {sorted(names)} do not match the manifest")
        self._names = list(self.manifest.parameters)

    # --- state ------------------------------------------------------------------------------------

    def _release(self) -> None:
        # ORT's pybind Module and Optimizer keep raw pointers into the CheckpointState, and the
        # direct steps hold those pybind objects beyond the Python wrappers that own the state.
        # Freeing them in attribute order (or in whatever order the cyclic GC picks) could free
        # the state first: an intermittent abort in a destructor. Release users before the state.
        for name in ("_steps", "_optimizer", "_module", "_state"):
            self.__dict__.pop(name, None)

    def __del__(self) -> None:
        self._release()

    def _attach(self, state: Any) -> None:
        d = self._dir
        self._release()
        self._state = state
        self._module = self._api.Module(
            str(d / FILES["training"]), state, str(d / FILES["eval"]), "cpu", self._options
        )
        self._optimizer = self._api.Optimizer(str(d / FILES["optimizer"]), self._module)
        self._optimizer.set_learning_rate(self._learning_rate)
        self._steps = _Steps(self._module, self._optimizer)

    def _ort_bytes(self, include_optimizer_state: bool = True) -> bytes:
        with tempfile.TemporaryDirectory(prefix="orbitfl-ort-") as tmp:
            path = Path(tmp) / "checkpoint"
            self._api.CheckpointState.save_checkpoint(self._state, str(path), include_optimizer_state)
            return path.read_bytes()

    def _load_ort_bytes(self, blob: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="orbitfl-ort-") as tmp:
            path = Path(tmp) / "checkpoint"
            path.write_bytes(blob)
            state = self._api.CheckpointState.load_checkpoint(str(path))
        self._attach(state)

    @property
    def learning_rate(self) -> float:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._learning_rate = check_learning_rate(value)
        self._optimizer.set_learning_rate(self._learning_rate)

    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and step count (e.g. at the start of a federated round)."""
        self._load_ort_bytes(self._ort_bytes(include_optimizer_state=False))
        self._sq, self._sq_steps = {}, 0

    # --- weights ----------------------------------------------------------------------------------

    def get_weights(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        wanted = self._names if names is None else list(names)
        self._check_names(wanted)
        return {n: np.array(self._state.parameters[n].data, dtype=np.float32, copy=True) for n in wanted}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        check_weights(self.manifest.parameters, weights)  # all validated before any is written
        for name, arr in weights.items():
            self._state.parameters[name].data = np.ascontiguousarray(arr)

    # --- steps (the shared loop in :class:`StepTrainer` calls these) ------------------------------

    def _track_squared_gradients(self) -> None:
        self._sq_steps += 1
        for n in self.manifest.trainable:
            g = np.asarray(self._state.parameters[n].grad, dtype=np.float32)
            prev = self._sq.get(n)
            self._sq[n] = (1 - SQ_BETA) * g * g if prev is None else SQ_BETA * prev + (1 - SQ_BETA) * g * g

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        steps = self._steps
        loss, out = steps.train(x, y)
        if self.manifest.optimizer == "sgd":
            self._track_squared_gradients()
        steps.optimizer_step()
        steps.reset_grad()
        return loss, out

    def _eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        return self._steps.eval(x, y)

    # --- curvature --------------------------------------------------------------------------------

    def second_moments(self) -> dict[str, np.ndarray]:
        if self.manifest.optimizer == "sgd":
            # Substitute (SGD has no v): bias-corrected running mean of squared gradients.
            corr = 1.0 - SQ_BETA**self._sq_steps if self._sq_steps else 1.0
            return {
                n: (self._sq[n] / corr).astype(np.float32)
                if n in self._sq
                else np.zeros(self.manifest.parameters[n], np.float32)
                for n in self.manifest.trainable
            }
        state = read_optimizer_state(self._ort_bytes(include_optimizer_state=True))
        out: dict[str, np.ndarray] = {}
        for n in self.manifest.trainable:
            v = state.momentums.get(n, {}).get("momentum1")
            out[n] = np.zeros(self.manifest.parameters[n], np.float32) if v is None else v.copy()
        return out

    # --- save / restore ---------------------------------------------------------------------------

    def _state_blob(self) -> tuple[dict[str, Any], bytes]:
        buf = io.BytesIO()
        arrays = {"ort": np.frombuffer(self._ort_bytes(), dtype=np.uint8)}
        arrays.update({f"sq.{k}": v for k, v in self._sq.items()})
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return {"sq_steps": self._sq_steps}, buf.getvalue()

    def _load_state_blob(self, meta: dict[str, Any], blob: bytes, path: Path) -> None:
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                ort_blob = z["ort"].tobytes()
                sq = {k[3:]: z[k].astype(np.float32) for k in z.files if k.startswith("sq.")}
        except (ValueError, KeyError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable trainer state ({exc})") from None
        try:
            self._load_ort_bytes(ort_blob)
        except Exception as exc:  # ORT raises its own exception types for a bad buffer
            raise CheckpointError(f"{path}: ONNX Runtime refused the checkpoint ({exc})") from None
        self._sq, self._sq_steps = sq, int(meta.get("sq_steps", 0))
