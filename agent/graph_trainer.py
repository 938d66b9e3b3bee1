"""The stock ONNX Runtime backend of :class:`orbitfl.agent.trainer.Trainer` (the default).

Runs the portable training artifacts of ``orbitfl model build`` (contract: docs/training.md):
``train_step.onnx`` (forward, loss and backward in standard ``ai.onnx`` ops; outputs the loss, the
logits and ``grad.<name>`` per trainable parameter) and ``eval_step.onnx`` (forward and loss) with a
plain ``onnxruntime.InferenceSession``, so it trains wherever stock ONNX Runtime has a wheel
(x86-64 and aarch64, CPython 3.10-3.13). The optimizer runs on the host in NumPy
(:mod:`orbitfl.agent.optim`). A trainer process imports numpy, onnxruntime and orbitfl only: the
manifest and ``params.npz`` are read with json and numpy, never with ``onnx``.

All parameters live in one flat float32 buffer, trainable ones first (in ``manifest.trainable``
order, which is also the order of the graph's gradient outputs), frozen ones after; each parameter
is a reshaped view into it, and those views are what the sessions are fed, so a step copies no
weight. The optimizer updates ``flat[:n_trainable]`` in place from a flat gradient buffer of the
same layout; frozen parameters are never written except by :meth:`set_weights`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from orbitfl.agent.optim import SGD, AdamW
from orbitfl.agent.train_loop import CHECKPOINT_NAME, StepTrainer, check_learning_rate
from orbitfl.agent.trainer import CheckpointError
from orbitfl.models.manifest import Manifest, check_weights, read_manifest
from orbitfl.ort_import import onnxruntime

__all__ = ["CHECKPOINT_NAME", "DEFAULT_LR", "GRAPH_FILES", "GraphTrainer"]

STATE_FORMAT = "orbitfl-graph-trainer/1"
DEFAULT_LR = {"adamw": 1e-3, "sgd": 0.05}  # as OrtTrainer
GRAPH_FILES = {"train_step": "train_step.onnx", "eval_step": "eval_step.onnx", "params": "params.npz"}


def _check_threads(threads: object) -> int:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    return threads


class GraphTrainer(StepTrainer):
    STATE_FORMAT = STATE_FORMAT

    def __init__(
        self, artifacts_dir: str | Path, *, learning_rate: float | None = None, threads: int = 1
    ) -> None:
        """``threads`` is ONNX Runtime's intra-op thread count (inter-op 1, sequential execution);
        1 keeps results bit-reproducible across a resume and is fastest for the zoo's small models
        on a board."""
        self._dir = Path(artifacts_dir)
        self.manifest: Manifest = read_manifest(self._dir)
        self._threads = _check_threads(threads)
        files = self._files()
        for key in ("train_step", "eval_step", "params"):
            if not files[key].is_file():
                raise ValueError(
                    f"{self._dir}: missing {files[key].name}; these artifacts are not for the "
                    "onnxruntime backend, rebuild them with `orbitfl model build`"
                )
        self._learning_rate = check_learning_rate(
            DEFAULT_LR[self.manifest.optimizer] if learning_rate is None else learning_rate
        )
        shapes = self.manifest.parameters
        unknown = [n for n in self.manifest.trainable if n not in shapes]
        if unknown:
            raise ValueError(f"{self._dir}: trainable parameters {unknown} are not in the manifest")

        # One flat buffer, trainable first; per-parameter views into it.
        trainable = list(self.manifest.trainable)
        layout = trainable + [n for n in shapes if n not in set(trainable)]
        sizes = {n: int(np.prod(shapes[n], dtype=np.int64)) for n in layout}
        self._n_trainable = sum(sizes[n] for n in trainable)
        self._flat = np.zeros(sum(sizes.values()), np.float32)
        self._grad = np.zeros(self._n_trainable, np.float32)
        self._views: dict[str, np.ndarray] = {}
        self._grad_views: list[np.ndarray] = []
        offset = 0
        for n in layout:
            self._views[n] = self._flat[offset : offset + sizes[n]].reshape(shapes[n])
            if n in set(trainable):
                self._grad_views.append(self._grad[offset : offset + sizes[n]].reshape(shapes[n]))
            offset += sizes[n]
        self._trainable_flat = self._flat[: self._n_trainable]
        self._load_params(files["params"])
        self._prox_mu = 0.0
        self._prox_anchor = np.zeros(0, np.float32)
        self._corr: np.ndarray | None = None  # SCAFFOLD's c − cᵢ, flat, trainable layout
        self._gsum = np.zeros(0, np.float64)
        self._gsteps = 0

        self._opt: AdamW | SGD = (
            AdamW(self._n_trainable) if self.manifest.optimizer == "adamw" else SGD(self._n_trainable)
        )

        ort = onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        self._train_sess = ort.InferenceSession(str(files["train_step"]), options, providers=providers)
        self._eval_sess = ort.InferenceSession(str(files["eval_step"]), options, providers=providers)
        params = list(shapes)
        inputs = ["input", "target", *params]
        grads = [f"grad.{n}" for n in trainable]
        self._check_io(self._train_sess, files["train_step"], inputs, ["loss", "output", *grads])
        self._check_io(self._eval_sess, files["eval_step"], inputs, ["loss", "output"])
        self._train_outputs = ["loss", "output", *grads]
        self._eval_outputs = ["loss", "output"]
        # The feed holds the parameter views themselves: ORT reads the flat buffer, no copy.
        self._feed: dict[str, np.ndarray] = {n: self._views[n] for n in params}

    # --- construction helpers ---------------------------------------------------------------------

    def _files(self) -> dict[str, Path]:
        try:
            listed = json.loads((self._dir / "manifest.json").read_text()).get("files", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            listed = {}
        names = dict(GRAPH_FILES)
        if isinstance(listed, dict):
            names.update({k: str(v) for k, v in listed.items() if k in GRAPH_FILES and isinstance(v, str)})
        return {k: self._dir / v for k, v in names.items()}

    def _load_params(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable parameters ({exc})") from None
        try:
            check_weights(self.manifest.parameters, arrays, partial=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: does not match the manifest: {exc}") from None
        for n, arr in arrays.items():
            self._views[n][...] = arr

    def _check_io(self, sess: Any, path: Path, inputs: list[str], outputs: list[str]) -> None:
        got_in = [i.name for i in sess.get_inputs()]
        got_out = [o.name for o in sess.get_outputs()]
        if got_in != inputs:
            raise ValueError(f"{path}: graph inputs {got_in} do not match the manifest, expected {inputs}")
        if got_out != outputs:
            raise ValueError(f"{path}: graph outputs {got_out} do not match the manifest, expected {outputs}")

    # --- properties -------------------------------------------------------------------------------

    @property
    def threads(self) -> int:
        """The intra-op thread count the sessions were created with."""
        return int(self._train_sess.get_session_options().intra_op_num_threads)

    @property
    def learning_rate(self) -> float:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._learning_rate = check_learning_rate(value)

    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and step count (e.g. at the start of a federated round)."""
        self._opt.reset()

    def set_proximal(self, mu: float) -> None:
        """FedProx: the gradient of μ/2·‖w − w₀‖² is added on the host, in place, before the
        optimizer step (w₀: the trainable weights now)."""
        if not (math.isfinite(mu) and mu >= 0.0):
            raise ValueError(f"proximal mu must be a finite number >= 0, got {mu!r}")
        self._prox_mu = float(mu)
        self._prox_anchor = self._trainable_flat.copy() if mu > 0.0 else np.zeros(0, np.float32)

    def set_correction(self, correction: Mapping[str, np.ndarray] | None) -> None:
        """SCAFFOLD: c − cᵢ added to every gradient on the host (after the raw gradient is summed
        for :meth:`mean_gradient`); every trainable tensor must be given, with its shape (frozen
        ones may be, and are ignored)."""
        self._gsteps = 0
        if correction is None:
            self._corr = None
            self._gsum = np.zeros(0, np.float64)
            return
        want = list(self.manifest.trainable)
        missing = [n for n in want if n not in correction]
        extra = [n for n in correction if n not in self.manifest.parameters]  # frozen ones: ignored
        if missing or extra:
            raise ValueError(f"SCAFFOLD correction: missing tensors {missing}, unknown tensors {extra}")
        flat = np.zeros(self._n_trainable, np.float32)
        offset = 0
        for n in want:
            c = np.asarray(correction[n], np.float32)
            size = int(np.prod(self.manifest.parameters[n], dtype=np.int64))
            if c.size != size or not np.isfinite(c).all():
                raise ValueError(f"SCAFFOLD correction[{n!r}] must hold {size} finite values, got {c.size}")
            flat[offset : offset + size] = c.reshape(-1)
            offset += size
        self._corr = flat
        self._gsum = np.zeros(self._n_trainable, np.float64)

    def mean_gradient(self) -> dict[str, np.ndarray]:
        if self._corr is None or self._gsteps == 0:
            raise ValueError("no SCAFFOLD training since set_correction: no gradients to average")
        return self._unflatten((self._gsum / self._gsteps).astype(np.float32))

    # --- weights ----------------------------------------------------------------------------------

    def get_weights(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        wanted = list(self.manifest.parameters) if names is None else list(names)
        self._check_names(wanted)
        return {n: self._views[n].copy() for n in wanted}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        check_weights(self.manifest.parameters, weights)  # all validated before any is written
        for name, arr in weights.items():
            self._views[name][...] = arr

    # --- steps ------------------------------------------------------------------------------------

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        feed = self._feed
        feed["input"] = x
        feed["target"] = y
        outs = self._train_sess.run(self._train_outputs, feed)
        for view, g in zip(self._grad_views, outs[2:], strict=True):
            np.copyto(view, g)
        if self._corr is not None:
            self._gsum += self._grad
            self._gsteps += 1
            self._grad += self._corr
        if self._prox_mu > 0.0:
            self._grad += np.float32(self._prox_mu) * (self._trainable_flat - self._prox_anchor)
        self._opt.step(self._trainable_flat, self._grad, self._learning_rate)
        return outs[0], outs[1]

    def _eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, np.ndarray]:
        feed = self._feed
        feed["input"] = x
        feed["target"] = y
        loss, out = self._eval_sess.run(self._eval_outputs, feed)
        return loss, out

    # --- curvature --------------------------------------------------------------------------------

    def _unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        offset = 0
        for n in self.manifest.trainable:
            shape = self.manifest.parameters[n]
            size = int(np.prod(shape, dtype=np.int64))
            out[n] = np.array(flat[offset : offset + size].reshape(shape), dtype=np.float32, copy=True)
            offset += size
        return out

    def second_moments(self) -> dict[str, np.ndarray]:
        """AdamW: its ``v`` exactly. SGD (no ``v``): the bias-corrected running mean of squared
        gradients (beta 0.999), the same substitute OrtTrainer keeps."""
        if isinstance(self._opt, AdamW):
            return self._unflatten(self._opt.v)
        return self._unflatten(self._opt.second_moment())

    # --- optimizer state alone ---------------------------------------------------------------------

    def optimizer_state(self) -> dict[str, Any]:
        """A copy of the optimizer's moments and step count, without the weights: what a simulator
        keeps per satellite so that one trainer can serve many (weights come with every task)."""
        opt = self._opt
        if isinstance(opt, AdamW):
            return {"m": opt.m.copy(), "v": opt.v.copy(), "step": opt.step_count}
        return {"sq": opt.sq.copy(), "sq_steps": opt.sq_steps}

    def load_optimizer_state(self, state: Mapping[str, Any] | None) -> None:
        """Put back what :meth:`optimizer_state` returned; ``None`` is a fresh optimizer."""
        opt = self._opt
        if state is None:
            opt.reset()
        elif isinstance(opt, AdamW):
            opt.m[...] = state["m"]
            opt.v[...] = state["v"]
            opt.step_count = int(state["step"])
        else:
            opt.sq[...] = state["sq"]
            opt.sq_steps = int(state["sq_steps"])

    # --- checkpoint state -------------------------------------------------------------------------

    def _state_blob(self) -> tuple[dict[str, Any], bytes]:
        buf = io.BytesIO()
        opt = self._opt
        if isinstance(opt, AdamW):
            arrays = {"params": self._flat, "m": opt.m, "v": opt.v}
            meta = {"step": opt.step_count}
        else:
            arrays = {"params": self._flat, "sq": opt.sq}
            meta = {"sq_steps": opt.sq_steps}
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return meta, buf.getvalue()

    def _load_state_blob(self, meta: dict[str, Any], blob: bytes, path: Path) -> None:
        want = {"params": self._flat.size}
        want.update({"m": self._n_trainable, "v": self._n_trainable} if isinstance(self._opt, AdamW) else {})
        if isinstance(self._opt, SGD):
            want["sq"] = self._n_trainable
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                arrays = {k: z[k] for k in want}
            steps = int(meta["step"] if isinstance(self._opt, AdamW) else meta["sq_steps"])
        except (ValueError, KeyError, OSError, TypeError) as exc:
            raise CheckpointError(f"{path}: unreadable trainer state ({exc})") from None
        for k, size in want.items():
            a = arrays[k]
            if a.dtype != np.float32 or a.shape != (size,) or not np.all(np.isfinite(a)):
                raise CheckpointError(f"{path}: trainer state {k!r} is not {size} finite float32 values")
        if steps < 0:
            raise CheckpointError(f"{path}: negative optimizer step count {steps}")
        # Everything checked: now write, in place (the views and the feed stay valid).
        self._flat[...] = arrays["params"]
        if isinstance(self._opt, AdamW):
            self._opt.m[...] = arrays["m"]
            self._opt.v[...] = arrays["v"]
            self._opt.step_count = steps
        else:
            self._opt.sq[...] = arrays["sq"]
            self._opt.sq_steps = steps
