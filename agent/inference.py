"""Onboard inference: run a .tflite model with LiteRT or tflite-runtime behind one small class.

    model = OnboardModel("mlp.int8.tflite")          # picks a runtime that is installed
    probs = model.predict(batch)                      # float32 in, float32 out

Runtimes, in the order tried: ``litert`` (``ai-edge-litert``, works with numpy 2) and
``tflite-runtime`` (``tflite_runtime``; its last release, 2.14, imports with numpy 2 but fails
inside ``Interpreter()``, so it is only used with numpy < 2). Force one with the ``runtime``
argument or the ``ORBITFL_TFLITE_RUNTIME`` environment variable.

This module (with its file check, :mod:`orbitfl.agent.tflite_check`) needs only numpy and a
runtime, so that a board can carry it without the rest of orbitfl's dependencies (no ONNX, no
flatbuffers). Every file is checked before a runtime sees it: tflite-runtime does not verify
flatbuffers and crashes (SIGSEGV) on a damaged one.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.agent.tflite_check import TFLiteFormatError, check_tflite

RUNTIMES = ("litert", "tflite-runtime")
ENV_VAR = "ORBITFL_TFLITE_RUNTIME"
_MODULES = {"litert": "ai_edge_litert.interpreter", "tflite-runtime": "tflite_runtime.interpreter"}
_PACKAGES = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime (with numpy<2)"}


class RuntimeUnavailableError(ImportError):
    """No usable TFLite runtime is installed (the message says which to install)."""


class InvalidModelError(ValueError):
    """The file is not a TFLite model the runtime can load."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model. A None dimension is dynamic (the batch)."""

    name: str
    index: int
    shape: tuple[int | None, ...]
    dtype: np.dtype[Any]
    scale: float  # 0.0 when not quantized
    zero_point: int


def _interpreter_class(runtime: str) -> Any:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown TFLite runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "tflite-runtime" and int(np.__version__.split(".")[0]) >= 2:
        raise RuntimeUnavailableError(
            f"tflite-runtime needs numpy<2 (this environment has numpy {np.__version__}); "
            "use ai-edge-litert instead, or an environment with numpy<2"
        )
    try:
        module = importlib.import_module(_MODULES[runtime])
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"{runtime} is not installed: pip install {_PACKAGES[runtime]}"
        ) from exc
    return module.Interpreter


def available_runtimes() -> list[str]:
    """The runtimes that can be used in this environment, in order of preference."""
    found = []
    for name in RUNTIMES:
        try:
            _interpreter_class(name)
        except RuntimeUnavailableError:
            continue
        found.append(name)
    return found


def _pick_runtime(runtime: str | None) -> tuple[str, Any]:
    wanted = runtime or os.environ.get(ENV_VAR) or None
    if wanted:
        return wanted, _interpreter_class(wanted)
    for name in RUNTIMES:
        try:
            return name, _interpreter_class(name)
        except RuntimeUnavailableError:
            continue
    raise RuntimeUnavailableError(
        "no TFLite runtime is installed: pip install ai-edge-litert (or tflite-runtime with numpy<2)"
    )


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    scale, zero = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        index=int(detail["index"]),
        shape=tuple(None if int(d) < 0 else int(d) for d in dims),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero),
    )


def _read_checked(path: Path) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"TFLite model not found: {path}")
    if not path.is_file():
        raise InvalidModelError(f"{path} is not a file")
    data = path.read_bytes()
    try:
        check_tflite(data)
    except TFLiteFormatError as exc:
        raise InvalidModelError(f"{path} is not a valid TFLite model: {exc}") from None
    return data


def _show(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"


class OnboardModel:
    """A loaded .tflite model: its input/output specs and `run` on a batch."""

    def __init__(
        self, path: str | os.PathLike[str], *, runtime: str | None = None, num_threads: int = 1
    ) -> None:
        self.path = Path(path)
        # the interpreter gets the very bytes that were checked, not the path again
        self._content = _read_checked(self.path)
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        self.runtime, interpreter_cls = _pick_runtime(runtime)
        try:
            self._interp = interpreter_cls(model_content=self._content, num_threads=num_threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise InvalidModelError(
                f"{self.path} is not a valid TFLite model for {self.runtime}: {exc}"
            ) from exc
        self.inputs = [_spec(d) for d in self._interp.get_input_details()]
        self.outputs = [_spec(d) for d in self._interp.get_output_details()]
        self._batch = [int(d["shape"][0]) if len(d["shape"]) else 0 for d in self._interp.get_input_details()]

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}{_show(s.shape)}:{s.dtype}" for s in self.inputs)
        outs = ", ".join(f"{s.name}{_show(s.shape)}:{s.dtype}" for s in self.outputs)
        return f"OnboardModel({str(self.path)!r}, runtime={self.runtime!r}, inputs=[{ins}], outputs=[{outs}])"

    def _prepare(self, spec: TensorSpec, x: Any) -> NDArray[Any]:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input {spec.name!r} must be a numpy array, not {type(x).__name__}")
        quantized_input = spec.dtype in (np.dtype(np.int8), np.dtype(np.uint8)) and spec.scale > 0
        if x.dtype != spec.dtype and not (quantized_input and x.dtype == np.float32):
            raise TypeError(f"input {spec.name!r} must be {spec.dtype}, got {x.dtype}")
        if x.ndim != len(spec.shape) or any(
            d is not None and d != n for d, n in zip(spec.shape[1:], x.shape[1:], strict=True)
        ):
            raise ValueError(f"input {spec.name!r} expects shape {_show(spec.shape)}, got {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"input {spec.name!r}: the batch is empty")
        if quantized_input and x.dtype == np.float32:
            info = np.iinfo(spec.dtype)
            q = np.rint(x / spec.scale) + spec.zero_point
            x = np.clip(q, info.min, info.max).astype(spec.dtype)
        return np.ascontiguousarray(x)

    def _invoke(self, arrays: list[NDArray[Any]]) -> list[NDArray[Any]]:
        for i, (spec, x) in enumerate(zip(self.inputs, arrays, strict=True)):
            if x.shape[0] != self._batch[i]:
                self._interp.resize_tensor_input(spec.index, list(x.shape))
                self._batch[i] = x.shape[0]
                self._interp.allocate_tensors()
        for spec, x in zip(self.inputs, arrays, strict=True):
            self._interp.set_tensor(spec.index, x)
        self._interp.invoke()
        return [self._interp.get_tensor(s.index) for s in self.outputs]

    def run(self, *batch: NDArray[Any], dequantize: bool = True) -> list[NDArray[Any]]:
        """Outputs (in model order) for one batch per model input; the first axis is the batch.

        A model with a fixed batch size is run chunk by chunk. int8/uint8 inputs accept float32
        (quantized with the input's scale and zero point); quantized outputs are dequantized to
        float32 unless `dequantize` is False.
        """
        if len(batch) != len(self.inputs):
            raise ValueError(f"the model has {len(self.inputs)} input(s), got {len(batch)} array(s)")
        arrays = [self._prepare(s, x) for s, x in zip(self.inputs, batch, strict=True)]
        n = arrays[0].shape[0]
        if any(a.shape[0] != n for a in arrays):
            raise ValueError(f"inputs have different batch sizes: {[a.shape[0] for a in arrays]}")
        fixed = [s.shape[0] for s in self.inputs if s.shape and s.shape[0] is not None]
        step = fixed[0] if fixed else n
        if n % step:
            raise ValueError(f"the model runs fixed batches of {step}; {n} samples do not split into them")
        parts = [self._invoke([a[i : i + step] for a in arrays]) for i in range(0, n, step)]
        outs = [
            np.concatenate([p[j] for p in parts]) if len(parts) > 1 else parts[0][j]
            for j in range(len(self.outputs))
        ]
        if dequantize:
            outs = [
                ((o.astype(np.float32) - s.zero_point) * np.float32(s.scale)).astype(np.float32)
                if s.scale > 0 and o.dtype in (np.int8, np.uint8, np.int16)
                else o
                for s, o in zip(self.outputs, outs, strict=True)
            ]
        return outs

    def predict(self, batch: NDArray[Any]) -> NDArray[Any]:
        """The only output of a single-input, single-output model."""
        if len(self.outputs) != 1:
            raise ValueError(f"predict() needs a single-output model; this one has {len(self.outputs)}")
        return self.run(batch)[0]
