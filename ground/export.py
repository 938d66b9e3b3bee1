"""``orbitfl ground export-model``: a stored global version as files a user can run elsewhere.

Writes, into ``--out``: ``model-v<N>.onnx`` (the federation's model graph with the version's
weights; runs in any ONNX Runtime) and, unless ``--onnx-only``, ``model-v<N>.tflite`` (float32)
and ``model-v<N>-int8.tflite`` (int8, calibrated on a data set) for LiteRT. It only reads the state
folder (a second SQLite reader is safe in WAL mode), so it can run beside a serving ground.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orbitfl.data.datasets import load
from orbitfl.ground.store import GroundStore
from orbitfl.models import zoo
from orbitfl.runtime.config import ConfigError, load_ground

CALIBRATION_SAMPLES = 128


@dataclass(frozen=True)
class Exported:
    version: int
    files: list[Path]


def export_model(
    state_dir: Path,
    model: str,
    out: Path,
    *,
    version: int | None = None,
    seed: int = 0,
    tflite: bool = True,
    calibration: str = "digits",
) -> Exported:
    """Write ``version`` (default: the newest) of the global model stored in ``state_dir``."""
    if not (state_dir / "ground.db").is_file():
        raise ConfigError(
            f"{state_dir}: no ground state here (ground.db is missing); name the ground's state_dir"
        )
    store = GroundStore(state_dir)
    try:
        versions = store.model_versions()
        v = versions[-1] if version is None and versions else version
        weights = None if v is None else store.load_model(v)
    finally:
        store.close()
    if v is None or weights is None:
        raise ConfigError(
            f"--version: v{version} is not stored in {state_dir} (stored: {_span(versions)}; "
            "older ones went by federation.keep_models)"
        )
    try:
        spec = zoo.resolve(model, seed=seed)
    except ValueError as exc:
        raise ConfigError(f"federation.model: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = zoo.write_inference_model(spec, out / f"model-v{v}.onnx", weights)
    files = [onnx_path]
    if tflite:
        # Deferred on purpose: the .tflite writer needs flatbuffers and tflite (extras train, litert).
        from orbitfl.models.tflite import export_tflite

        data = load(calibration, seed=0)
        x = np.ascontiguousarray(data.x_train[:CALIBRATION_SAMPLES], dtype=np.float32)
        x = x.reshape((len(x), *spec.input_shape))
        files.append(export_tflite(spec.model, out / f"model-v{v}.tflite", weights=weights, mode="float"))
        files.append(
            export_tflite(
                spec.model, out / f"model-v{v}-int8.tflite", weights=weights, mode="int8", calibration=x
            )
        )
    return Exported(v, files)


def _span(versions: list[int]) -> str:
    return ", ".join(f"v{v}" for v in versions) if versions else "none"


def cmd_export(args: argparse.Namespace) -> int:
    cfg = load_ground(Path(args.config))
    fed = cfg.federation
    done = export_model(
        cfg.ground.state_dir,
        fed.model,
        Path(args.out),
        version=args.model_version,
        seed=fed.model_seed,
        tflite=not args.onnx_only,
        calibration=args.calibration or fed.eval_dataset or "digits",
    )
    for f in done.files:
        print(f)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("export-model", help="write a stored global version as ONNX and .tflite (float, int8)")
    p.add_argument("--config", required=True, help="the ground's TOML config (its state_dir and model)")
    # dest is not "version": that is `orbitfl --version`'s, in the same namespace
    p.add_argument(
        "--version", type=int, dest="model_version", help="the version to export (default: the newest)"
    )
    p.add_argument("--out", required=True, help="folder to write model-vN.onnx and .tflite files into")
    p.add_argument("--onnx-only", action="store_true", help="no .tflite files (no flatbuffers/tflite needed)")
    p.add_argument(
        "--calibration",
        choices=["digits", "mnist1d"],
        help="data set the int8 file is calibrated on (default: federation.eval_dataset, else digits)",
    )
    p.set_defaults(func=cmd_export)
