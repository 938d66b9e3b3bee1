"""tools/constraints.txt (the pinned build inputs) and pyproject.toml's ranges agree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "orbitfl_tools_constraints", ROOT / "tools" / "constraints.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pins = _load()


def test_every_pin_lies_inside_pyprojects_range() -> None:
    found = pins.read_pins()
    assert pins.disagreements(found, pins.pyproject_ranges()) == []


def test_the_build_tools_that_decide_the_result_are_pinned() -> None:
    names = {p.name for p in pins.read_pins()}
    assert {"pybind11", "cmake", "ninja", "scikit-build-core"} <= names


def test_the_pybind11_floor_is_what_the_bindings_need() -> None:
    # checked_array.hpp's py::str(dtype) is ambiguous before pybind11 3.1 (3.0.1, 2.13.6 fail).
    (spec,) = pins.pyproject_ranges()["pybind11"]
    assert not spec.contains("3.0.4") and spec.contains("3.1.0")


def test_a_pin_outside_the_range_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "constraints.txt"
    bad.write_text("# a comment\npybind11==2.13.6\nnumpy==2.4.6; python_version >= '3.11'\n")
    found = pins.read_pins(bad)
    assert [p.name for p in found] == ["pybind11", "numpy"]
    report = pins.disagreements(found, pins.pyproject_ranges())
    assert len(report) == 1 and "pybind11==2.13.6" in report[0]


def test_only_exact_pins_are_accepted(tmp_path: Path) -> None:
    loose = tmp_path / "constraints.txt"
    loose.write_text("cmake>=3.18\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        pins.read_pins(loose)


def test_refresh_picks_the_newest_release_in_range() -> None:
    listing = "pybind11 (3.1.0)\nAvailable versions: 3.2.0rc1, 3.1.0, 3.0.4, 2.13.6\n"
    assert pins.newest_in_range(listing, pins.pyproject_ranges()["pybind11"]) == "3.1.0"
    assert pins.newest_in_range("nothing listed", None) is None
