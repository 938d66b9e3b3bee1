"""What a board reads about an artifact directory, and the weight checks every backend shares.

Kept free of ``onnx`` and ``onnxruntime`` imports so that a trainer process loads neither to learn
what it is training (the artifacts are built once, elsewhere, by :mod:`orbitfl.models.artifacts`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

MANIFEST = "manifest.json"
FORMAT = "orbitfl-artifacts/1"
Optimizer = Literal["adamw", "sgd"]
Loss = Literal["ce", "mse"]
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
LOSSES: tuple[str, ...] = ("ce", "mse")
# The backend a directory was built for decides its files. A manifest without "backend" was
# written before there was a choice: onnxruntime-training.
BACKENDS: tuple[str, ...] = ("onnxruntime", "onnxruntime-training")
DEFAULT_BACKEND = "onnxruntime"
LEGACY_BACKEND = "onnxruntime-training"
BACKEND_FILES: dict[str, dict[str, str]] = {
    # standard ai.onnx graphs (orbitfl.models.autodiff) that stock onnxruntime runs
    "onnxruntime": {
        "inference": "inference.onnx",
        "train_step": "train_step.onnx",
        "eval_step": "eval_step.onnx",
        "params": "params.npz",
    },
    # onnxruntime.training.artifacts.generate_artifacts
    "onnxruntime-training": {
        "inference": "inference.onnx",
        "training": "training_model.onnx",
        "eval": "eval_model.onnx",
        "optimizer": "optimizer_model.onnx",
        "checkpoint": "checkpoint",
    },
}
FILES = BACKEND_FILES[LEGACY_BACKEND]  # the ORT-training files, as before backends existed


def files_for(backend: str) -> dict[str, str]:
    """The files an artifact directory of ``backend`` holds (besides manifest.json)."""
    try:
        return BACKEND_FILES[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}") from None


@dataclass(frozen=True)
class Manifest:
    """What the trainer reads about an artifact directory."""

    model: str
    options: dict[str, Any]
    input_shape: tuple[int, ...]
    task: str
    num_outputs: int
    loss: str
    optimizer: str
    parameters: dict[str, tuple[int, ...]]
    trainable: list[str]
    groups: dict[str, list[str]]
    backend: str = LEGACY_BACKEND
    # orbitfl.models.zoo.fingerprint of the inference model ("" in manifests written before it).
    fingerprint: str = ""

    @property
    def files(self) -> dict[str, str]:
        return files_for(self.backend)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "options": self.options,
            "input_shape": list(self.input_shape),
            "task": self.task,
            "num_outputs": self.num_outputs,
            "loss": self.loss,
            "optimizer": self.optimizer,
            "parameters": {k: list(v) for k, v in self.parameters.items()},
            "trainable": self.trainable,
            "groups": self.groups,
            "backend": self.backend,
            "fingerprint": self.fingerprint,
            "files": files_for(self.backend),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT:
            raise ValueError(
                f"not an orbitfl artifact manifest (format {data.get('format')!r}, expected {FORMAT!r})"
            )
        return cls(
            model=str(data["model"]),
            options=dict(data["options"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),
            task=str(data["task"]),
            num_outputs=int(data["num_outputs"]),
            loss=str(data["loss"]),
            optimizer=str(data["optimizer"]),
            parameters={k: tuple(int(d) for d in v) for k, v in data["parameters"].items()},
            trainable=[str(n) for n in data["trainable"]],
            groups={k: [str(n) for n in v] for k, v in data.get("groups", {}).items()},
            backend=str(data.get("backend", LEGACY_BACKEND)),
            fingerprint=str(data.get("fingerprint", "")),
        )


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{directory}: no {MANIFEST}; build artifacts with `orbitfl model build NAME --out DIR`"
        )
    try:
        data = json.loads(path.read_text())
        return Manifest.from_json(data)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: malformed manifest ({exc})") from None


def check_weights(
    expected: Mapping[str, tuple[int, ...]], weights: Mapping[str, Any], *, partial: bool = True
) -> None:
    """Refuse unknown names (ValueError), non-float32 arrays (TypeError) and wrong shapes
    (ValueError), each error naming the parameter. ``partial=False`` also requires every name."""
    for name, arr in weights.items():
        if name not in expected:
            raise ValueError(f"unknown parameter {name!r}; the model has: {', '.join(expected)}")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"parameter {name!r}: expected a numpy.ndarray, got {type(arr).__name__}")
        if arr.dtype != np.float32:
            raise TypeError(f"parameter {name!r}: expected dtype float32, got {arr.dtype}")
        if tuple(arr.shape) != tuple(expected[name]):
            raise ValueError(
                f"parameter {name!r}: expected shape {tuple(expected[name])}, got {tuple(arr.shape)}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"parameter {name!r}: contains NaN or infinity")
    if not partial:
        missing = [n for n in expected if n not in weights]
        if missing:
            raise ValueError(f"missing parameters: {', '.join(missing)}")


def is_model_path(name_or_path: str) -> bool:
    """Whether a ``model`` setting names the user's own ONNX file rather than a zoo model."""
    return name_or_path.endswith(".onnx") or "/" in name_or_path


def model_name(name_or_path: str) -> str:
    """The name a manifest records for a ``model`` setting: the zoo name, or the file's stem."""
    return Path(name_or_path).stem if is_model_path(name_or_path) else name_or_path
