"""tools/demo_twin.py screens recipes for the digits demo in one process; it is only worth that if
its accuracies are the demo's. Here both run the same rounds and must agree round by round: the
real daemons (ground and 4 agents as processes) against the twin."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

TOOL = Path(__file__).resolve().parents[2] / "tools" / "demo_twin.py"


def _twin() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_twin", TOOL)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The warm-up's densities change from round to round, so a twin that counted rounds differently
# from the agents' codec state would drift apart in the first rounds.
@pytest.mark.parametrize("recipe", ["fp32", "dgc:0.03,warmup=6,ramp=geometric | sign | zstd"])
def test_the_twin_gives_the_demos_accuracies_round_by_round(tmp_path: Path, recipe: str) -> None:
    rounds, seed = 4, 2
    report = tmp_path / "report.json"
    args = ["--codec", recipe, "--rounds", str(rounds), "--seed", str(seed), "--insecure"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "orbitfl.cli",
            "demo",
            *args,
            "--workdir",
            str(tmp_path / "w"),
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    demo = [row["accuracy"] for row in json.loads(report.read_text())["rounds"]]
    twin = _twin().run(recipe, seed, rounds=rounds)["curve"]
    assert len(demo) == rounds
    assert twin == demo
