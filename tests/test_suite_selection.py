"""What tests/conftest.py leaves out of the emulated aarch64 suite, and how it shards it: the
collection pytest itself makes, run as tools/cross/aarch64.py runs it (a child pytest with the
environment set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATHS = ["tests/kernels/test_dgc_select.py", "tests/codec/test_cli.py", "tests/agent/test_optim.py"]


def _collect(env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("ORBITFL_EMULATED_BOARD", "ORBITFL_SHARD")}
    got = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *PATHS],
        cwd=REPO,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, got.stdout + got.stderr
    return [line for line in got.stdout.splitlines() if "::" in line]


@pytest.fixture(scope="module")
def everything() -> list[str]:
    return _collect({})


def test_the_emulated_board_suite_drops_numpy_cases_and_host_only_tests(everything: list[str]) -> None:
    board = _collect({"ORBITFL_EMULATED_BOARD": "1"})
    dropped = set(everything) - set(board)
    assert set(board) <= set(everything)
    assert any("[numpy" in t or "-numpy" in t for t in dropped)
    kernels = [t for t in board if t.startswith("tests/kernels/")]
    assert not any("[numpy" in t for t in kernels), [t for t in kernels if "[numpy" in t]
    # C++ cases and the tests comparing the two backends stay
    assert any("[cpp" in t for t in board)
    assert any("cpp_and_numpy" in t for t in board)
    # host_only: the CLI's argument checks; the bench's rows (run through the C++ core) stay
    assert "tests/codec/test_cli.py::test_bench_and_inspect_refuse_bad_input" in dropped
    assert "tests/codec/test_cli.py::test_bench_json_rows_are_sane" in board
    # test_optim's kernel-against-reference cases are parametrized by a bool, not a backend name
    assert any(t.startswith("tests/agent/test_optim.py") and "[numpy]" in t for t in board)


def test_shards_are_disjoint_and_together_the_whole_suite(everything: list[str]) -> None:
    shards = [_collect({"ORBITFL_SHARD": f"{i}/3"}) for i in range(3)]
    assert sorted(t for s in shards for t in s) == sorted(everything)
    assert all(abs(len(s) - len(everything) / 3) <= 1 for s in shards)


@pytest.mark.parametrize("bad", ["2/2", "1", "a/b", "-1/2"])
def test_a_bad_shard_is_refused_by_name(bad: str) -> None:
    got = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", PATHS[0]],
        cwd=REPO,
        env={**os.environ, "ORBITFL_SHARD": bad},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode != 0
    assert "ORBITFL_SHARD must be i/n" in got.stdout + got.stderr
