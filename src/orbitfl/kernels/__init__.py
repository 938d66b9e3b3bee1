"""The compression kernels behind one interface, in two implementations.

``backend("cpp")`` is the compiled ``orbitfl._core``; ``backend("numpy")`` is the NumPy reference
(:mod:`orbitfl.kernels.reference`) with the same functions and semantics. The test suite runs
against both, and the benchmark measures one against the other.
"""

from __future__ import annotations

from types import ModuleType
from typing import Literal

BackendName = Literal["cpp", "numpy"]
BACKENDS: tuple[BackendName, ...] = ("cpp", "numpy")


def backend(name: str = "cpp") -> ModuleType:
    """Return the kernel module called ``name`` ("cpp" or "numpy")."""
    if name == "cpp":
        from orbitfl import _core

        return _core
    if name == "numpy":
        from orbitfl.kernels import reference

        return reference
    raise ValueError(f"unknown kernel backend {name!r}: expected one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "BackendName", "backend"]
