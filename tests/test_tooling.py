"""The linters run with the suite: ``ruff check``, ``ruff format --check`` and strict mypy over the
one ``orbitfl`` package must report nothing. Outside CI a missing tool skips its test; in CI
(``CI`` set) a missing tool is a failure."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> list[str]:
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed (pip install '.[dev]')")
        pytest.skip(f"{name} is not installed (pip install '.[dev]')")
    return [exe]


def _run(cmd: list[str]) -> None:
    got = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, f"{' '.join(cmd)} found problems:\n{got.stdout}{got.stderr}"


def test_ruff_check_is_clean() -> None:
    _run([*_tool("ruff"), "check", "--no-cache", "."])


def test_ruff_format_is_clean() -> None:
    _run([*_tool("ruff"), "format", "--check", "--no-cache", "."])


def _numpy_pin() -> str | None:
    """The numpy that tools/constraints.txt pins for this interpreter, if any."""
    from packaging.markers import Marker

    where = REPO / "tools" / "constraints.py"
    spec = importlib.util.spec_from_file_location("orbitfl_tools_constraints", where)
    assert spec is not None and spec.loader is not None
    pins = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pins  # its dataclasses look their module up there
    spec.loader.exec_module(pins)
    for pin in pins.read_pins():
        if pin.name == "numpy" and (not pin.marker or Marker(pin.marker).evaluate()):
            return str(pin.version)
    return None


def test_mypy_strict_is_clean() -> None:
    # mypy's verdict depends on numpy's own annotations (numpy 2.3 gave ndarray's type parameters
    # defaults and widened its shapes), so the strict check is made against the pinned numpy.
    # CPython 3.10 cannot have it (numpy 2.3 needs 3.11): there the code is checked by ruff only.
    pinned, here = _numpy_pin(), importlib.metadata.version("numpy")
    if pinned is None:
        pytest.skip("tools/constraints.txt pins no numpy for this Python; mypy runs against a pinned one")
    if here != pinned:
        pytest.skip(f"numpy {here} here: mypy runs against the pinned numpy {pinned} (tools/constraints.txt)")
    mypy = _tool("mypy")
    spec = importlib.util.spec_from_file_location("package_view", REPO / "tools" / "package_view.py")
    assert spec is not None and spec.loader is not None
    view = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(view)
    view.build_view(REPO)  # build/typecheck/orbitfl: pyproject's mypy_path
    _run([*mypy, "--cache-dir", str(REPO / "build" / "mypy-cache")])
