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

import hashlib
import io
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from orbitfl.agent.ort_checkpoint import read_optimizer_state
from orbitfl.agent.trainer import (
    CheckpointError,
    EvalMetrics,
    Trainer,
    TrainMetrics,
    clean_stale_temp_files,
    read_checkpoint_file,
    write_checkpoint_file,
)
from orbitfl.models.manifest import FILES, Manifest, check_weights, read_manifest

from orbitfl.ort_import import onnxruntime, training_api

CHECKPOINT_NAME = "train.ckpt"
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


class OrtTrainer(Trainer):
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
        self._learning_rate = float(learning_rate or DEFAULT_LR[self.manifest.optimizer])
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
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"learning rate must be a positive finite number, got {value!r}")
        self._learning_rate = float(value)
        self._optimizer.set_learning_rate(self._learning_rate)

    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and step count (e.g. at the start of a federated round)."""
        self._load_ort_bytes(self._ort_bytes(include_optimizer_state=False))
        self._sq, self._sq_steps = {}, 0

    # --- weights ----------------------------------------------------------------------------------

    @property
    def parameter_names(self) -> list[str]:
        return list(self._names)

    @property
    def trainable_names(self) -> list[str]:
        return list(self.manifest.trainable)

    @property
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.manifest.parameters)

    def get_weights(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        wanted = self._names if names is None else list(names)
        for n in wanted:
            if n not in self.manifest.parameters:
                raise ValueError(f"unknown parameter {n!r}; the model has: {', '.join(self._names)}")
        return {n: np.array(self._state.parameters[n].data, dtype=np.float32, copy=True) for n in wanted}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        check_weights(self.manifest.parameters, weights)  # all validated before any is written
        for name, arr in weights.items():
            self._state.parameters[name].data = np.ascontiguousarray(arr)

    # --- data -------------------------------------------------------------------------------------

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {type(x).__name__}")
        if not np.issubdtype(x.dtype, np.floating):
            raise TypeError(f"x must hold floating-point values, got dtype {x.dtype}")
        shape = self.manifest.input_shape
        per = int(np.prod(shape))
        if x.ndim < 1 or len(x) == 0 or x[0].size != per:
            raise ValueError(
                f"x must have shape [N, {per}] or [N, {', '.join(map(str, shape))}] with N >= 1, "
                f"got {x.shape}"
            )
        out = np.ascontiguousarray(x.reshape(len(x), *shape), dtype=np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError("x contains NaN or infinity")
        return out

    def _targets(self, y: np.ndarray, n: int) -> np.ndarray:
        if not isinstance(y, np.ndarray):
            raise TypeError(f"y must be a numpy.ndarray, got {type(y).__name__}")
        if len(y) != n:
            raise ValueError(f"x has {n} samples but y has {len(y)}")
        if self.manifest.loss == "ce":
            if not np.issubdtype(y.dtype, np.integer):
                raise TypeError(f"y must hold integer class labels for cross-entropy, got dtype {y.dtype}")
            c = self.manifest.num_outputs
            if y.ndim != 1 or (y.size and (int(y.min()) < 0 or int(y.max()) >= c)):
                raise ValueError(f"y must be a 1-D array of labels in 0..{c - 1}")
            return np.ascontiguousarray(y, dtype=np.int64)
        if not np.issubdtype(y.dtype, np.floating):
            raise TypeError(f"y must hold floating-point targets for MSE, got dtype {y.dtype}")
        out = np.ascontiguousarray(y.reshape(n, -1), dtype=np.float32)
        if out.shape[1] != self.manifest.num_outputs:
            raise ValueError(f"y must have {self.manifest.num_outputs} values per sample, got {out.shape[1]}")
        return out

    def _fingerprint(self, x: np.ndarray, y: np.ndarray, **run: Any) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                {
                    "model": self.manifest.model,
                    "trainable": self.manifest.trainable,
                    "optimizer": self.manifest.optimizer,
                    **run,
                },
                sort_keys=True,
            ).encode()
        )
        for name, arr in self.get_weights().items():
            h.update(name.encode())
            h.update(arr.tobytes())
        h.update(x.tobytes())
        h.update(y.tobytes())
        return h.hexdigest()

    # --- training ---------------------------------------------------------------------------------

    def _track_squared_gradients(self) -> None:
        self._sq_steps += 1
        for n in self.manifest.trainable:
            g = np.asarray(self._state.parameters[n].grad, dtype=np.float32)
            prev = self._sq.get(n)
            self._sq[n] = (1 - SQ_BETA) * g * g if prev is None else SQ_BETA * prev + (1 - SQ_BETA) * g * g

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        learning_rate: float | None = None,
        max_batches: int | None = None,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0,
        on_batch: Callable[[int, int], bool | None] | None = None,
    ) -> TrainMetrics:
        xs = self._inputs(x)
        ys = self._targets(y, len(xs))
        for label, v in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{label} must be a positive integer, got {v!r}")
        if max_batches is not None and max_batches <= 0:
            raise ValueError(f"max_batches must be positive, got {max_batches}")
        if checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
        if learning_rate is not None:
            self.learning_rate = learning_rate
        n = len(xs)
        per_epoch = math.ceil(n / batch_size)
        classify = self.manifest.loss == "ce"

        ckpt: Path | None = None
        run_id = ""
        start_epoch, start_batch = 0, 0
        totals = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        history: list[dict[str, float]] = []
        resumed: tuple[int, int] | None = None
        if checkpoint_dir is not None:
            ckpt = Path(checkpoint_dir) / CHECKPOINT_NAME
            clean_stale_temp_files(ckpt.parent, ckpt.name)
            run_id = self._fingerprint(
                xs, ys, epochs=epochs, batch_size=batch_size, seed=seed, lr=self._learning_rate
            )
            if ckpt.exists():
                meta, blob = read_checkpoint_file(ckpt)  # a corrupted checkpoint raises here
                progress = meta.get("progress")
                if meta.get("run") == run_id and isinstance(progress, dict):
                    self._restore_from(meta, blob, ckpt)
                    start_epoch, start_batch = int(progress["epoch"]), int(progress["batch"])
                    totals = {k: float(v) for k, v in progress["totals"].items()}
                    history = list(meta.get("history", []))
                    resumed = (start_epoch, start_batch)

        def save(epoch: int, batch: int) -> None:
            if ckpt is not None:
                self._save_to(
                    ckpt,
                    run=run_id,
                    history=history,
                    progress={"epoch": epoch, "batch": batch, "totals": totals},
                )

        t0 = time.perf_counter()
        done = 0
        seen_call, loss_call, correct_call = 0, 0.0, 0.0
        stop = False
        steps = self._steps
        for epoch in range(start_epoch, epochs):
            order = np.random.default_rng([seed, epoch]).permutation(n)
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                totals = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
            for b in range(first, per_epoch):
                idx = order[b * batch_size : (b + 1) * batch_size]
                yb = ys[idx]
                loss, out = steps.train(xs[idx], yb)
                if self.manifest.optimizer == "sgd":
                    self._track_squared_gradients()
                steps.optimizer_step()
                steps.reset_grad()
                k = len(idx)
                batch_loss = float(loss) * k
                batch_correct = float(np.count_nonzero(out.argmax(axis=1) == yb)) if classify else 0.0
                totals["loss"] += batch_loss
                totals["correct"] += batch_correct
                totals["seen"] += k
                seen_call += k
                loss_call += batch_loss
                correct_call += batch_correct
                done += 1
                stop = bool(on_batch(epoch, b + 1)) if on_batch is not None else False
                if max_batches is not None and done >= max_batches:
                    stop = True
                mid_epoch = b + 1 < per_epoch
                if mid_epoch and (stop or (checkpoint_every and (b + 1) % checkpoint_every == 0)):
                    save(epoch, b + 1)
                if stop:
                    break
            if stop and mid_epoch:
                break
            row = {"epoch": float(epoch + 1), "loss": totals["loss"] / max(totals["seen"], 1.0)}
            if classify:
                row["accuracy"] = totals["correct"] / max(totals["seen"], 1.0)
            history.append(row)
            save(epoch + 1, 0)
            if stop:
                break
        seconds = time.perf_counter() - t0
        return TrainMetrics(
            loss=loss_call / seen_call if seen_call else float("nan"),
            accuracy=(correct_call / seen_call if seen_call else float("nan")) if classify else None,
            samples=seen_call,
            batches=done,
            epochs=done / per_epoch,
            seconds=seconds,
            resumed_from=resumed,
            history=history,
        )

    def _run_eval(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
        loss_sum = 0.0
        outs = []
        for s in range(0, len(x), batch_size):
            loss, out = self._steps.eval(x[s : s + batch_size], y[s : s + batch_size])
            loss_sum += float(loss) * len(out)
            outs.append(np.asarray(out, dtype=np.float32))
        return loss_sum / len(x), np.concatenate(outs)

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> EvalMetrics:
        xs = self._inputs(x)
        ys = self._targets(y, len(xs))
        loss, out = self._run_eval(xs, ys, max(1, int(batch_size)))
        acc = float(np.mean(np.argmax(out, axis=1) == ys)) if self.manifest.loss == "ce" else None
        return EvalMetrics(loss=loss, accuracy=acc, samples=len(xs))

    def predict(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        xs = self._inputs(x)
        # The eval graph wants a target; a dummy one only changes the loss, which is discarded.
        if self.manifest.loss == "ce":
            dummy = np.zeros(len(xs), dtype=np.int64)
        else:
            dummy = np.zeros((len(xs), self.manifest.num_outputs), dtype=np.float32)
        return self._run_eval(xs, dummy, max(1, int(batch_size)))[1]

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

    def _save_to(self, path: Path, **extra: Any) -> Path:
        buf = io.BytesIO()
        arrays = {"ort": np.frombuffer(self._ort_bytes(), dtype=np.uint8)}
        arrays.update({f"sq.{k}": v for k, v in self._sq.items()})
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        meta = {
            "format": STATE_FORMAT,
            "model": self.manifest.model,
            "optimizer": self.manifest.optimizer,
            "parameters": {k: list(v) for k, v in self.manifest.parameters.items()},
            "trainable": self.manifest.trainable,
            "learning_rate": self._learning_rate,
            "sq_steps": self._sq_steps,
            **extra,
        }
        return write_checkpoint_file(path, meta, buf.getvalue())

    def _restore_from(self, meta: dict[str, Any], blob: bytes, path: Path) -> None:
        if meta.get("format") != STATE_FORMAT:
            raise CheckpointError(
                f"{path}: not an ONNX Runtime trainer checkpoint (format {meta.get('format')!r})"
            )
        mine = {k: list(v) for k, v in self.manifest.parameters.items()}
        if meta.get("parameters") != mine or meta.get("trainable") != self.manifest.trainable:
            raise CheckpointError(
                f"{path}: checkpoint is for a different model or trainable set "
                f"(model {meta.get('model')!r}); refusing to load it"
            )
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
        self.learning_rate = float(meta.get("learning_rate", self._learning_rate))

    def save(self, path: str | Path) -> Path:
        return self._save_to(Path(path), run=None, progress=None)

    def restore(self, path: str | Path) -> None:
        meta, blob = read_checkpoint_file(path)
        self._restore_from(meta, blob, Path(path))
