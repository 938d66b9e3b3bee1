"""export_tflite: an inference ONNX model (plus trained weights) to a float32 or int8 .tflite file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.models.tflite.graph import Graph
from orbitfl.models.tflite.lower import lower
from orbitfl.models.tflite.quantize import WEIGHT_QUANTIZERS, calibrate, quantize_graph
from orbitfl.models.tflite.writer import serialize

MODES = ("float", "int8")


def _calibration_inputs(graph: Graph, calibration: Any) -> dict[str, NDArray[np.float32]]:
    """Check calibration samples against the graph inputs: one array, or name -> array."""
    if isinstance(calibration, np.ndarray):
        if len(graph.inputs) != 1:
            raise ValueError(
                f"the model has {len(graph.inputs)} inputs; pass calibration as a dict name -> array"
            )
        calibration = {graph.inputs[0]: calibration}
    if not isinstance(calibration, Mapping):
        raise TypeError(
            f"calibration must be a numpy array or a dict of arrays, not {type(calibration).__name__}"
        )
    missing = set(graph.inputs) - set(calibration)
    if missing:
        raise ValueError(f"calibration has no samples for input(s) {', '.join(sorted(missing))}")
    out: dict[str, NDArray[np.float32]] = {}
    sizes = set()
    for name in graph.inputs:
        arr = calibration[name]
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            raise TypeError(
                f"calibration samples for {name!r} must be a float32 array, got "
                f"{getattr(arr, 'dtype', type(arr).__name__)}"
            )
        want = graph.tensors[name].shape
        if arr.ndim != len(want) or any(
            w is not None and w != d for w, d in zip(want[1:], arr.shape[1:], strict=True)
        ):
            shown = "(" + ", ".join("N" if d is None else str(d) for d in want) + ")"
            raise ValueError(
                f"calibration samples for {name!r} have shape {arr.shape}, the model input is {shown}"
            )
        if want[0] is not None and arr.shape[0] % want[0]:
            raise ValueError(
                f"calibration for {name!r}: {arr.shape[0]} samples do not split into batches of {want[0]}"
            )
        if arr.shape[0] == 0:
            raise ValueError(f"calibration samples for {name!r} are empty")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"calibration samples for {name!r} contain NaN or Inf")
        out[name] = arr
        sizes.add(arr.shape[0])
    if len(sizes) > 1:
        raise ValueError(f"calibration inputs have different sample counts: {sorted(sizes)}")
    return out


def build_graph(
    onnx_model: Any,
    *,
    weights: Mapping[str, NDArray[np.float32]] | None = None,
    mode: str = "float",
    per_channel: bool = True,
    calibration: Any = None,
    weight_quantizer: str = "laq",
) -> Graph:
    """The exporter graph export_tflite would write (for inspection and tests)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "float" and calibration is not None:
        raise ValueError("calibration data is only used by mode='int8'")
    if weight_quantizer not in WEIGHT_QUANTIZERS:
        raise ValueError(
            f"weight_quantizer must be one of {', '.join(WEIGHT_QUANTIZERS)}, got {weight_quantizer!r}"
        )
    if mode == "int8" and calibration is None:
        raise ValueError("mode='int8' needs calibration inputs (a few hundred representative samples)")
    graph = lower(onnx_model, weights)
    if mode == "int8":
        samples = _calibration_inputs(graph, calibration)
        fixed = {n: graph.tensors[n].shape[0] for n in graph.inputs}
        batch = next(iter(fixed.values())) or 256
        ranges = calibrate(graph, samples, batch=batch)
        quantize_graph(graph, ranges, per_channel, WEIGHT_QUANTIZERS[weight_quantizer])
    return graph


def export_tflite(
    onnx_model: Any,
    out_path: str | os.PathLike[str],
    *,
    weights: Mapping[str, NDArray[np.float32]] | None = None,
    mode: str = "float",
    per_channel: bool = True,
    calibration: Any = None,
    weight_quantizer: str = "laq",
) -> Path:
    """Write `onnx_model` (a ModelProto or .onnx path) as a .tflite file; returns its path.

    weights: name -> float32 array replacing the initializers of that name (trained weights).
    mode: "float" (float32 throughout) or "int8" (int8 weights and activations, float input and
    output). int8 needs `calibration`: representative inputs (an array shaped like the model
    input, or name -> array), whose ranges set the activation scales. per_channel: one weight
    scale per output channel (else one per tensor). weight_quantizer: "laq" (orbitfl's
    loss-aware quantizer fits each scale to the least squared error; the default) or "maxabs"
    (scale = max|w| / 127, the TensorFlow converter's rule).
    The file is written atomically: a crash leaves either the old file or the new one.
    """
    graph = build_graph(
        onnx_model,
        weights=weights,
        mode=mode,
        per_channel=per_channel,
        calibration=calibration,
        weight_quantizer=weight_quantizer,
    )
    data = serialize(graph, description=f"orbitfl {mode} export")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
