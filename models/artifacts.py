"""ONNX Runtime training artifacts for a zoo model or a user's ONNX model.

An artifact directory holds what a board needs to train and to infer, and nothing that needs
PyTorch or onnx at run time:

    inference.onnx        the inference graph with the initial weights
    training_model.onnx   forward + loss + gradients (ORT on-device training)
    eval_model.onnx       forward + loss
    optimizer_model.onnx  AdamW or SGD step
    checkpoint            ORT checkpoint with the initial parameters
    manifest.json         model name, options, input shape, task, loss, optimizer, trainable names
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

from orbitfl.models import zoo
from orbitfl.models.manifest import FILES, LOSSES, MANIFEST, OPTIMIZERS, Manifest

from orbitfl.ort_import import training_artifacts


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


def build_artifacts(
    spec: zoo.ModelSpec,
    out_dir: str | Path,
    *,
    optimizer: str = "adamw",
    trainable: Sequence[str] | None = None,
    loss: str | None = None,
) -> Manifest:
    """Write the inference model, the ORT training artifacts and the manifest into ``out_dir``.

    ``trainable`` are names, globs or group prefixes (see :func:`zoo.select_parameters`); the
    other parameters are frozen (kept in the checkpoint, not updated by the optimizer).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    loss = loss or spec.default_loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(LOSSES)}")
    names = spec.parameter_names
    chosen = zoo.select_parameters(names, trainable)
    frozen = [n for n in names if n not in chosen]

    art = training_artifacts()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # generate_artifacts writes several files; build into a sibling temp folder and swap the files in
    # so a crash never leaves a directory mixing two builds.
    with tempfile.TemporaryDirectory(dir=out, prefix=".build-") as tmp:
        tmpdir = Path(tmp)
        zoo.write_inference_model(spec, tmpdir / FILES["inference"])
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
            num_outputs=spec.num_outputs,
            loss=loss,
            optimizer=optimizer,
            parameters=zoo.parameter_shapes(spec.model),
            trainable=chosen,
            groups=dict(spec.groups),
        )
        (tmpdir / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        for fname in [*FILES.values(), MANIFEST]:
            src = tmpdir / fname
            if not src.exists():
                raise RuntimeError(f"onnxruntime did not write {fname}")
            os.replace(src, out / fname)
    return manifest
