"""Opens the trainer an artifact directory was built for: the one place that picks a backend.

Every caller (agent daemon, simulator, ``orbitfl model train``, benchmarks) opens trainers through
:func:`open_trainer`, so a new backend changes this file and nothing that uses a trainer. Backends
are imported when chosen: each pulls in its own runtime, and a board loads only the one it runs.
"""

from __future__ import annotations

from pathlib import Path

from orbitfl.agent.trainer import Trainer
from orbitfl.models.manifest import read_manifest

BACKENDS: tuple[str, ...] = ("onnxruntime-training",)


def open_trainer(
    artifacts_dir: str | Path, *, learning_rate: float | None = None, threads: int = 1
) -> Trainer:
    """A trainer for ``artifacts_dir`` (written by ``orbitfl model build``), on its backend."""
    manifest = read_manifest(artifacts_dir)
    backend = getattr(manifest, "backend", "onnxruntime-training")
    if backend == "onnxruntime-training":
        # Deferred: imports onnxruntime (training build), a heavy optional dependency.
        from orbitfl.agent.ort_trainer import OrtTrainer

        return OrtTrainer(artifacts_dir, learning_rate=learning_rate, threads=threads)
    raise ValueError(
        f"{artifacts_dir}: artifacts for backend {backend!r}, which this orbitfl does not know "
        f"(known: {', '.join(BACKENDS)}); rebuild them with `orbitfl model build`"
    )
