"""Import ONNX Runtime (with its on-device training API) without ever importing torch.

With torch installed, three places in ``onnxruntime-training`` import it (DESIGN §6):
``import onnxruntime`` itself (``capi/onnxruntime_validation.py`` probes
``onnxruntime.training.ortmodule``), ``onnxruntime/training/__init__.py`` (through ``optim``) and
``onnxruntime/tools/__init__.py`` (used by ``training.artifacts``). Registering bare package
modules for ``onnxruntime.training`` and ``onnxruntime.tools`` (pointing ``__path__`` at the real
folders so their submodules still import) and ``None`` for ``onnxruntime.training.ortmodule``
before the first ``import onnxruntime`` skips all three: the submodules orbitfl uses
(``training.api``, ``training.artifacts``, ``training.onnxblock``) do not need the package inits.
It also makes the import about 15x faster and 300 MiB smaller, which matters on a board.

Every orbitfl module that needs ONNX Runtime calls :func:`onnxruntime` (or :func:`training_api`
/ :func:`training_artifacts`) instead of importing it directly.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

_BARE = ("onnxruntime.training", "onnxruntime.tools")


class OrtUnavailableError(ImportError):
    """ONNX Runtime (training build) is not installed here; the message says what to install."""


def _package_dir() -> Path:
    spec = importlib.util.find_spec("onnxruntime")  # locating does not run onnxruntime/__init__
    if spec is None or not spec.submodule_search_locations:
        raise OrtUnavailableError(
            "onnxruntime is not installed. On-device training needs stock onnxruntime >= 1.20 "
            "(x86-64 and aarch64): pip install onnxruntime (or 'orbitfl[train]' to build artifacts "
            "too). See docs/training.md."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _register_bare_packages() -> None:
    root = _package_dir()
    for name in _BARE:
        if name in sys.modules:
            continue
        folder = root / name.split(".", 1)[1]
        mod = types.ModuleType(name, f"bare package registered by orbitfl.ort_import instead of {folder}")
        mod.__path__ = [str(folder)]
        mod.__package__ = name
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        mod.__spec__.submodule_search_locations = [str(folder)]
        sys.modules[name] = mod
    # None in sys.modules makes ``import onnxruntime.training.ortmodule`` raise ImportError at once,
    # which onnxruntime_validation treats as "no ortmodule" and carries on.
    if "onnxruntime.training.ortmodule" not in sys.modules:
        sys.modules["onnxruntime.training.ortmodule"] = None  # type: ignore[assignment]


def onnxruntime() -> types.ModuleType:
    """The ``onnxruntime`` module, imported the torch-free way."""
    mod = sys.modules.get("onnxruntime")
    if mod is not None and "onnxruntime.training" in sys.modules:
        return mod
    _register_bare_packages()
    mod = importlib.import_module("onnxruntime")
    for name in _BARE:  # make ``onnxruntime.training`` reachable as an attribute as well
        setattr(mod, name.split(".", 1)[1], sys.modules[name])
    return mod


def training_api() -> Any:
    """``onnxruntime.training.api`` (Module, Optimizer, CheckpointState)."""
    onnxruntime()
    try:
        return importlib.import_module("onnxruntime.training.api")
    except ImportError as exc:
        raise OrtUnavailableError(
            f"this onnxruntime has no on-device training API ({exc}); the old backend needs "
            "onnxruntime-training 1.19.2 (x86-64, CPython 3.10/3.11) instead of onnxruntime: "
            "pip install 'orbitfl[ort-training]' in its own venv (tools/dev.py ortt)"
        ) from None


def training_artifacts() -> Any:
    """``onnxruntime.training.artifacts`` (generate_artifacts, LossType, OptimType)."""
    onnxruntime()
    try:
        return importlib.import_module("onnxruntime.training.artifacts")
    except ImportError as exc:
        raise OrtUnavailableError(
            f"this onnxruntime cannot generate onnxruntime-training artifacts ({exc}); that needs "
            "onnxruntime-training 1.19.2 and onnx 1.17: pip install 'orbitfl[ort-training]'"
        ) from None
