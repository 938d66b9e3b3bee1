"""The fuzz harness lives in tools/fuzz_ground.py (so a million frames can be run from the command
line); the suites here load it by path, as pytest's importlib mode cannot import tools/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz_ground.py"


@pytest.fixture(scope="session")
def fz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_ground", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_ground"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod
