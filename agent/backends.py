"""Opens the trainer an artifact directory was built for: the one place that picks a backend.

Every caller (agent daemon, simulator, ``orbitfl model train``, benchmarks) opens trainers through
:func:`open_trainer`, so a new backend changes this file and nothing that uses a trainer. Backends
are imported when chosen: each pulls in its own runtime, and a board loads only the one it runs.

- ``"onnxruntime"`` (the default of ``orbitfl model build``):
  :class:`~orbitfl.agent.graph_trainer.GraphTrainer`,
  portable training graphs on stock ONNX Runtime (x86-64 and aarch64, CPython 3.10-3.13).
- ``"onnxruntime-training"`` (artifacts whose manifest names no backend, built before it existed):
  :class:`~orbitfl.agent.ort_trainer.OrtTrainer`, ONNX Runtime on-device training 1.19.2
  (x86-64, CPython 3.10/3.11 only).
"""

from __future__ import annotations

import json
from pathlib import Path

from orbitfl.agent.train_loop import StepTrainer
from orbitfl.models.manifest import MANIFEST, read_manifest

BACKENDS: tuple[str, ...] = ("onnxruntime", "onnxruntime-training")
LEGACY_BACKEND = "onnxruntime-training"  # a manifest without "backend" predates the field


def artifacts_backend(artifacts_dir: str | Path) -> str:
    """The backend ``artifacts_dir`` was built for (its manifest's ``"backend"``)."""
    manifest = read_manifest(artifacts_dir)  # validates; ValueError names what is wrong
    backend = getattr(manifest, "backend", None)
    if backend is None:  # a Manifest without the field: read it from the file
        data = json.loads((Path(artifacts_dir) / MANIFEST).read_text())
        backend = data.get("backend", LEGACY_BACKEND) if isinstance(data, dict) else LEGACY_BACKEND
    return str(backend)


def open_trainer(
    artifacts_dir: str | Path, *, learning_rate: float | None = None, threads: int = 1
) -> StepTrainer:
    """A trainer for ``artifacts_dir`` (written by ``orbitfl model build``), on its backend."""
    backend = artifacts_backend(artifacts_dir)
    if backend == "onnxruntime":
        # Deferred: imports stock onnxruntime (no onnx, no training build).
        from orbitfl.agent.graph_trainer import GraphTrainer

        return GraphTrainer(artifacts_dir, learning_rate=learning_rate, threads=threads)
    if backend == "onnxruntime-training":
        # Deferred: imports onnxruntime (training build), a heavy optional dependency.
        from orbitfl.agent.ort_trainer import OrtTrainer

        return OrtTrainer(artifacts_dir, learning_rate=learning_rate, threads=threads)
    raise ValueError(
        f"{artifacts_dir}: artifacts for backend {backend!r}, which this orbitfl does not know "
        f"(known: {', '.join(BACKENDS)}); rebuild them with `orbitfl model build`"
    )
