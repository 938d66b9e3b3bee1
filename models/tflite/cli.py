"""``orbitfl model export-tflite``: write trained weights as a float32 or int8 .tflite file.

The ``model`` group (orbitfl.apps.model) picks this module up and calls :func:`register`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.data import load_digits
from orbitfl.models.tflite import export_tflite
from orbitfl.models.tflite.lower import load_onnx

CALIBRATION_SETS = ("digits",)


def add_export_tflite_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "export-tflite",
        help="export an ONNX model (and trained weights) to .tflite, float32 or int8",
        description="Write an inference ONNX model, optionally with trained weights from an .npz "
        "(name -> array), as a .tflite file for LiteRT / tflite-runtime. No TensorFlow needed.",
    )
    p.add_argument("--onnx", required=True, type=Path, metavar="MODEL.onnx", help="inference ONNX model")
    p.add_argument(
        "--weights",
        type=Path,
        metavar="W.npz",
        help="trained weights: an .npz of float32 arrays named like the model's parameters",
    )
    p.add_argument("--out", required=True, type=Path, metavar="F.tflite", help="file to write")
    p.add_argument(
        "--int8",
        action="store_true",
        help="full-integer int8 model (float input/output); needs --calibration-data",
    )
    p.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per tensor instead of per output channel (with --int8)",
    )
    p.add_argument(
        "--weight-quantizer",
        choices=("laq", "maxabs"),
        default="laq",
        help="int8 weight scales: laq (least squared error, orbitfl's LAQ kernel; default) or "
        "maxabs (max|w|/127)",
    )
    p.add_argument(
        "--calibration-data",
        metavar="digits|FILE.npy",
        help="representative inputs for the int8 activation ranges: 'digits' (training split "
        "of scikit-learn's digits) or an .npy of samples shaped like the model input",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=500,
        metavar="N",
        help="use at most N calibration samples (default 500)",
    )
    p.set_defaults(func=run_export_tflite)
    return p


def register(subparsers: Any) -> None:
    """Add ``export-tflite`` to the ``orbitfl model`` subcommands."""
    add_export_tflite_parser(subparsers)


def _input_shape(model: Any) -> tuple[int | None, ...]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ValueError(f"--calibration-data needs a single-input model; this one has {len(inputs)} inputs")
    dims = inputs[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def _calibration(source: str, shape: tuple[int | None, ...], limit: int) -> NDArray[np.float32]:
    if source == "digits":
        samples = load_digits().x_train
    else:
        path = Path(source)
        if path.suffix != ".npy":
            raise ValueError(
                f"--calibration-data must be one of {', '.join(CALIBRATION_SETS)} or an .npy file, "
                f"got {source!r}"
            )
        if not path.is_file():
            raise FileNotFoundError(f"calibration file not found: {path}")
        samples = np.load(path, allow_pickle=False)
        if samples.dtype.kind != "f":
            raise TypeError(f"{path}: calibration samples must be floating point, got {samples.dtype}")
    per_sample = shape[1:]
    if any(d is None for d in per_sample):
        raise ValueError(f"model input {shape} has a dynamic dimension besides the batch")
    want = int(np.prod([d for d in per_sample if d is not None]))
    got = int(np.prod(samples.shape[1:])) if samples.ndim > 1 else 1
    if samples.ndim < 1 or got != want:
        raise ValueError(
            f"calibration samples of shape {samples.shape} do not fit the model input "
            f"(N, {', '.join(str(d) for d in per_sample)})"
        )
    samples = samples[:limit].reshape(-1, *[int(d) for d in per_sample if d is not None])
    return np.ascontiguousarray(samples, dtype=np.float32)


def _weights(path: Path) -> dict[str, NDArray[Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a readable .npz of arrays: {exc}") from exc


def run_export_tflite(args: argparse.Namespace) -> int:
    prog = "orbitfl model export-tflite"
    if not args.int8 and (args.per_tensor or args.calibration_data):
        print(f"{prog}: error: --per-tensor and --calibration-data only apply with --int8", file=sys.stderr)
        return 2
    if args.int8 and not args.calibration_data:
        print(f"{prog}: error: --int8 needs --calibration-data (digits or FILE.npy)", file=sys.stderr)
        return 2
    if args.calibration_samples < 1:
        print(f"{prog}: error: --calibration-samples must be at least 1", file=sys.stderr)
        return 2
    try:
        model = load_onnx(args.onnx)
        weights = _weights(args.weights) if args.weights else None
        calibration = (
            _calibration(args.calibration_data, _input_shape(model), args.calibration_samples)
            if args.int8
            else None
        )
        out = export_tflite(
            model,
            args.out,
            weights=weights,
            mode="int8" if args.int8 else "float",
            per_channel=not args.per_tensor,
            calibration=calibration,
            weight_quantizer=args.weight_quantizer,
        )
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    kind = f"int8 ({'per-tensor' if args.per_tensor else 'per-channel'} weights)" if args.int8 else "float32"
    print(f"wrote {out} ({out.stat().st_size} bytes, {kind})")
    return 0
