"""The compression kernels behind one interface, in two implementations.

``backend("cpp")`` is the compiled ``orbitfl._core``; ``backend("numpy")`` is the NumPy reference
(:mod:`orbitfl.kernels.reference`) with the same functions and semantics. The test suite runs
against both, and the benchmark measures one against the other.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

from orbitfl.kernels import reference

BackendName = Literal["cpp", "numpy"]
BACKENDS: tuple[BackendName, ...] = ("cpp", "numpy")


def backend(name: str = "cpp") -> ModuleType:
    """Return the kernel module called ``name`` ("cpp" or "numpy")."""
    if name == "cpp":
        # Deferred on purpose: the compiled extension loads only when asked for, so the NumPy
        # reference (and the cross-build tooling that uses it) runs where no build exists.
        from orbitfl import _core

        return _core
    if name == "numpy":
        return reference
    raise ValueError(f"unknown kernel backend {name!r}: expected one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BackendName", "backend"]
