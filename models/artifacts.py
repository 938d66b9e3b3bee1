"""Training artifacts for a zoo model or a user's ONNX model.

An artifact directory holds what a board needs to train and to infer, and nothing that needs
PyTorch or onnx at run time. Backend "onnxruntime" (the default; stock ONNX Runtime >= 1.20 on
x86-64 and aarch64, see /work/notes/trainer_contract.md):

    inference.onnx        the inference graph with the initial weights
    train_step.onnx       forward + loss + gradients, standard ai.onnx ops (orbitfl.models.autodiff)
    eval_step.onnx        forward + loss
    params.npz            the initial parameters, float32
    manifest.json         model name, options, input shape, task, loss, optimizer, trainable names,
                          backend and files

Backend "onnxruntime-training" (onnxruntime-training 1.19.2 and onnx <= 1.17 only) writes ORT's
training_model.onnx, eval_model.onnx, optimizer_model.onnx and checkpoint instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from orbitfl.models import autodiff, zoo
from orbitfl.models.manifest import (
    BACKENDS,
    DEFAULT_BACKEND,
    LOSSES,
    MANIFEST,
    OPTIMIZERS,
    Manifest,
    files_for,
)
from orbitfl.ort_import import OrtUnavailableError


@contextlib.contextmanager
def _native_stderr_captured(log: Path) -> Iterator[None]:
    """ORT's gradient builder logs every graph transform to the C-level stderr at info level,
    whatever the Python-side severity; keep that in a file and show its tail only on failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "w+b") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        except Exception as exc:
            os.dup2(saved, 2)
            f.seek(0)
            tail = f.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(
                f"onnxruntime could not build the training artifacts: {exc}\n" + "\n".join(tail)
            ) from exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def resolve_model(name_or_path: str, **options: Any) -> zoo.ModelSpec:
    """A zoo name, or the path of a user's ``.onnx`` file."""
    if name_or_path.endswith(".onnx") or os.sep in name_or_path:
        task = options.pop("task", None)
        extra = {k: v for k, v in options.items() if v is not None}
        if extra:
            raise ValueError(f"options {sorted(extra)} apply to zoo models only, not to {name_or_path}")
        return zoo.load_user_model(name_or_path, task=task)
    options.pop("task", None)
    return zoo.build(name_or_path, **options)


def _legacy_training_artifacts() -> Any:
    """``onnxruntime.training.artifacts``, imported only for backend "onnxruntime-training"."""
    major_minor = tuple(int(v) for v in onnx.__version__.split(".")[:2])
    if major_minor > (1, 17):
        raise OrtUnavailableError(
            f"backend 'onnxruntime-training' needs onnx <= 1.17 and onnxruntime-training 1.19.2 "
            f"(x86-64, CPython 3.10/3.11); this install has onnx {onnx.__version__}. "
            f"Use the default backend 'onnxruntime' (stock onnxruntime >= 1.20) instead"
        )
    from orbitfl.ort_import import training_artifacts  # needs onnxruntime-training

    return training_artifacts()


def build_artifacts(
    spec: zoo.ModelSpec,
    out_dir: str | Path,
    *,
    optimizer: str = "adamw",
    trainable: Sequence[str] | None = None,
    loss: str | None = None,
    backend: str = DEFAULT_BACKEND,
) -> Manifest:
    """Write the inference model, the training graphs of ``backend`` and the manifest into ``out_dir``.

    ``trainable`` are names, globs or group prefixes (see :func:`zoo.select_parameters`); the
    other parameters are frozen (graph inputs without a gradient, never updated).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    loss = loss or spec.default_loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    names = spec.parameter_names
    chosen = zoo.select_parameters(names, trainable)
    frozen = [n for n in names if n not in chosen]
    files = files_for(backend)
    graphs = None
    art = None
    if backend == "onnxruntime":  # derive the graphs before touching the directory
        graphs = autodiff.build_training_graphs(
            spec.model, trainable=chosen, loss=loss, num_outputs=spec.num_outputs or None
        )
    else:
        art = _legacy_training_artifacts()
    num_outputs = graphs.num_outputs if graphs is not None else spec.num_outputs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Several files make one build: write them into a sibling temp folder and swap them in, so a
    # crash never leaves a directory mixing two builds.
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        tmpdir = Path(tmp)
        zoo.write_inference_model(spec, tmpdir / files["inference"])
        if graphs is not None:
            onnx.save(graphs.train, str(tmpdir / files["train_step"]))
            onnx.save(graphs.eval, str(tmpdir / files["eval_step"]))
            with open(tmpdir / files["params"], "wb") as f:
                np.savez(f, **zoo.get_weights(spec.model))  # type: ignore[arg-type]
        else:
            assert art is not None
            with _native_stderr_captured(tmpdir / "ort.log"):
                art.generate_artifacts(
                    spec.model,
                    requires_grad=chosen,
                    frozen_params=frozen,
                    loss=art.LossType.CrossEntropyLoss if loss == "ce" else art.LossType.MSELoss,
                    optimizer=art.OptimType.AdamW if optimizer == "adamw" else art.OptimType.SGD,
                    artifact_directory=str(tmpdir),
                    additional_output_names=[spec.model.graph.output[0].name],
                )
        manifest = Manifest(
            model=spec.name,
            options=dict(spec.options),
            input_shape=tuple(spec.input_shape),
            task=spec.task,
            num_outputs=num_outputs,
            loss=loss,
            optimizer=optimizer,
            parameters=zoo.parameter_shapes(spec.model),
            trainable=chosen,
            groups=dict(spec.groups),
            backend=backend,
            fingerprint=zoo.fingerprint(spec),
        )
        (tmpdir / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        for fname in [*files.values(), MANIFEST]:
            src = tmpdir / fname
            if not src.exists():
                raise RuntimeError(f"{backend} build did not write {fname}")
        for fname in [*files.values(), MANIFEST]:  # manifest last: it names a complete build
            os.replace(tmpdir / fname, out / fname)
    return manifest
