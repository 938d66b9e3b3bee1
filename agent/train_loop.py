"""The training loop every :class:`~orbitfl.agent.trainer.Trainer` backend shares.

:class:`StepTrainer` owns everything that does not depend on the runtime: checking ``x`` and ``y``,
epochs and batches in an order seeded by ``(seed, epoch)``, the run fingerprint, checkpoint and
resume through the atomic SHA-256 container (:mod:`orbitfl.agent.trainer`), ``on_batch`` stops,
``max_batches``, per-epoch history rows and the metrics. A backend supplies one training step (forward,
backward and optimizer update on one batch), one evaluation step, and its own state as a blob for
the checkpoint; it never sees epochs, shuffling or checkpoint files.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from orbitfl.agent.trainer import (
    CheckpointError,
    EvalMetrics,
    Trainer,
    TrainMetrics,
    clean_stale_temp_files,
    read_checkpoint_file,
    write_checkpoint_file,
)
from orbitfl.models.manifest import Manifest

CHECKPOINT_NAME = "train.ckpt"


def check_learning_rate(value: object) -> float:
    if isinstance(value, bool) or not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"learning rate must be a positive finite number, got {value!r}")
    return float(value)


class StepTrainer(Trainer):
    """A :class:`Trainer` built from a per-batch step: subclasses set ``manifest`` and implement
    the hooks below (``_train_step``, ``_eval_step``, ``_state_blob``, ``_load_state_blob``, the
    ``learning_rate`` property and the weight accessors)."""

    manifest: Manifest
    STATE_FORMAT: str = ""  # names the backend's checkpoint blob; a checkpoint of another is refused

    # --- backend hooks ----------------------------------------------------------------------------

    @abc.abstractmethod
    def _train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        """Forward, backward and one optimizer update on a batch; (mean loss, outputs)."""

    @abc.abstractmethod
    def _eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        """Forward and loss on a batch, no update; (mean loss, outputs)."""

    @abc.abstractmethod
    def _state_blob(self) -> tuple[dict[str, Any], bytes]:
        """The backend's state for a checkpoint: JSON-able extra metadata and a blob holding
        weights and optimizer state."""

    @abc.abstractmethod
    def _load_state_blob(self, meta: dict[str, Any], blob: bytes, path: Path) -> None:
        """Load what :meth:`_state_blob` returned (``meta`` is the whole checkpoint metadata). A blob
        it cannot use raises :class:`CheckpointError` and leaves the trainer unchanged."""

    @property
    @abc.abstractmethod
    def learning_rate(self) -> float: ...

    @learning_rate.setter
    @abc.abstractmethod
    def learning_rate(self, value: float) -> None: ...

    @abc.abstractmethod
    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and step count (e.g. at the start of a federated round)."""

    def set_proximal(self, mu: float) -> None:
        """FedProx: add μ·(w − w₀) to every gradient from now on, w₀ the current weights (the
        term μ/2·‖w − w₀‖² on the loss); μ = 0 turns it off. Backends that cannot refuse μ > 0."""
        if mu != 0.0:
            raise ValueError(f"the {type(self).__name__} backend cannot train with a proximal term (FedProx)")

    def set_correction(self, correction: Mapping[str, np.ndarray] | None) -> None:
        """SCAFFOLD: add ``correction`` (c − cᵢ, per trainable tensor) to every gradient from now on
        and average the raw gradients seen (:meth:`mean_gradient`); None turns it off. Backends
        that cannot refuse a correction."""
        if correction is not None:
            raise ValueError(f"the {type(self).__name__} backend cannot train with SCAFFOLD's correction")

    def mean_gradient(self) -> dict[str, np.ndarray]:
        """The mean raw minibatch gradient since :meth:`set_correction` (SCAFFOLD's new cᵢ)."""
        raise ValueError(f"the {type(self).__name__} backend does not average gradients")

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
        if not np.all(np.isfinite(out)):
            raise ValueError("y contains NaN or infinity")
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
        if max_batches is not None and (
            isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches <= 0
        ):
            raise ValueError(f"max_batches must be a positive integer, got {max_batches!r}")
        if (
            isinstance(checkpoint_every, bool)
            or not isinstance(checkpoint_every, int)
            or checkpoint_every < 0
        ):
            raise ValueError(f"checkpoint_every must be an integer >= 0, got {checkpoint_every!r}")
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
                xs, ys, epochs=epochs, batch_size=batch_size, seed=seed, lr=self.learning_rate
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

        # One epoch's samples in shuffled order, gathered once per epoch into reused buffers: each
        # batch is then a contiguous view, not a fresh fancy-indexed copy per step.
        xo = np.empty_like(xs)
        yo = np.empty_like(ys)
        step = self._train_step
        t0 = time.perf_counter()
        done = 0
        seen_call, loss_call, correct_call = 0, 0.0, 0.0
        stop = False
        mid_epoch = False
        for epoch in range(start_epoch, epochs):
            order = np.random.default_rng([seed, epoch]).permutation(n)
            np.take(xs, order, axis=0, out=xo)
            np.take(ys, order, axis=0, out=yo)
            first = start_batch if epoch == start_epoch else 0
            if first == 0:
                totals = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
            for b in range(first, per_epoch):
                lo = b * batch_size
                hi = min(lo + batch_size, n)
                yb = yo[lo:hi]
                loss, out = step(xo[lo:hi], yb)
                k = hi - lo
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

    # --- evaluation -------------------------------------------------------------------------------

    def _run_eval(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
        loss_sum = 0.0
        outs = []
        for s in range(0, len(x), batch_size):
            loss, out = self._eval_step(x[s : s + batch_size], y[s : s + batch_size])
            loss_sum += float(loss) * len(out)
            outs.append(np.asarray(out, dtype=np.float32))
        return loss_sum / len(x), np.concatenate(outs)

    @staticmethod
    def _batch_size(batch_size: int) -> int:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return batch_size

    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> EvalMetrics:
        xs = self._inputs(x)
        ys = self._targets(y, len(xs))
        loss, out = self._run_eval(xs, ys, self._batch_size(batch_size))
        acc = float(np.mean(np.argmax(out, axis=1) == ys)) if self.manifest.loss == "ce" else None
        return EvalMetrics(loss=loss, accuracy=acc, samples=len(xs))

    def predict(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        xs = self._inputs(x)
        # The eval graph wants a target; a dummy one only changes the loss, which is discarded.
        if self.manifest.loss == "ce":
            dummy = np.zeros(len(xs), dtype=np.int64)
        else:
            dummy = np.zeros((len(xs), self.manifest.num_outputs), dtype=np.float32)
        return self._run_eval(xs, dummy, self._batch_size(batch_size))[1]

    # --- save / restore ---------------------------------------------------------------------------

    def _save_to(self, path: Path, **extra: Any) -> Path:
        backend_meta, blob = self._state_blob()
        meta = {
            "format": self.STATE_FORMAT,
            "model": self.manifest.model,
            "optimizer": self.manifest.optimizer,
            "parameters": {k: list(v) for k, v in self.manifest.parameters.items()},
            "trainable": self.manifest.trainable,
            "learning_rate": self.learning_rate,
            **backend_meta,
            **extra,
        }
        return write_checkpoint_file(path, meta, blob)

    def _restore_from(self, meta: dict[str, Any], blob: bytes, path: Path) -> None:
        if meta.get("format") != self.STATE_FORMAT:
            raise CheckpointError(
                f"{path}: not a checkpoint of this trainer backend (format {meta.get('format')!r}, "
                f"expected {self.STATE_FORMAT!r})"
            )
        mine = {k: list(v) for k, v in self.manifest.parameters.items()}
        if meta.get("parameters") != mine or meta.get("trainable") != self.manifest.trainable:
            raise CheckpointError(
                f"{path}: checkpoint is for a different model or trainable set "
                f"(model {meta.get('model')!r}); refusing to load it"
            )
        if meta.get("optimizer") != self.manifest.optimizer:
            raise CheckpointError(
                f"{path}: checkpoint is for optimizer {meta.get('optimizer')!r}, this trainer runs "
                f"{self.manifest.optimizer!r}; refusing to load it"
            )
        try:
            lr = check_learning_rate(meta.get("learning_rate", self.learning_rate))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        self._load_state_blob(meta, blob, path)
        self.learning_rate = lr

    def save(self, path: str | Path) -> Path:
        return self._save_to(Path(path), run=None, progress=None)

    def restore(self, path: str | Path) -> None:
        meta, blob = read_checkpoint_file(path)
        self._restore_from(meta, blob, Path(path))

    # --- weights (shared checks) ------------------------------------------------------------------

    def _check_names(self, names: list[str]) -> None:
        for n in names:
            if n not in self.manifest.parameters:
                raise ValueError(
                    f"unknown parameter {n!r}; the model has: {', '.join(self.manifest.parameters)}"
                )

    @property
    def parameter_names(self) -> list[str]:
        return list(self.manifest.parameters)

    @property
    def trainable_names(self) -> list[str]:
        return list(self.manifest.trainable)

    @property
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.manifest.parameters)

    def _zeros_like_trainable(self) -> dict[str, np.ndarray]:
        return {n: np.zeros(self.manifest.parameters[n], np.float32) for n in self.manifest.trainable}

    @staticmethod
    def _copies(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.array(v, dtype=np.float32, copy=True) for k, v in arrays.items()}
