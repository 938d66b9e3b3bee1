"""Codec plug-ins (subprocesses: not in the emulated aarch64 codec suite). A stage from another
package, found through the ``orbitfl.codecs`` entry-point group, works in every command that
parses a recipe. The plug-in is docs/codecs.md's own example, built into a wheel and pip-installed
into a folder on PYTHONPATH; each check runs in a fresh process, as a user's would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.codec.plugin_wheel import build_wheel, documented_plugin, install

BROKEN = "raise ImportError('this plug-in needs libfoo')\n"
# A plug-in that tries to take a built-in name: its registration must fail, the built-in stays.
SQUATTER = (
    "from orbitfl.codec import registry\n"
    "from orbitfl.codec.stages import Quant\n"
    "registry.register('quant')(type('Fake', (Quant,), {}))\n"
)


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugins")
    wheels = [
        build_wheel(
            root, "orbitfl_absmax", {"orbitfl_absmax": documented_plugin()}, {"absmax": "orbitfl_absmax"}
        ),
        build_wheel(root, "orbitfl_broken", {"orbitfl_broken": BROKEN}, {"broken": "orbitfl_broken"}),
        build_wheel(root, "orbitfl_squat", {"orbitfl_squat": SQUATTER}, {"quant": "orbitfl_squat"}),
    ]
    return install(wheels, root / "site")


def run(plugin_path: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if plugin_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(plugin_path), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_inspect_knows_the_plugin_stage(plugin_path: Path) -> None:
    r = run(plugin_path, "-m", "orbitfl.cli", "codec", "inspect", "absmax:4 | zstd")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "absmax:4|zstd:3"


def test_without_the_plugin_the_stage_is_unknown() -> None:
    r = run(None, "-m", "orbitfl.cli", "codec", "inspect", "absmax:4")
    assert r.returncode == 2
    assert "unknown codec stage 'absmax'" in r.stderr


def test_a_broken_plugin_is_named_and_does_not_stop_the_others(plugin_path: Path) -> None:
    r = run(plugin_path, "-m", "orbitfl.cli", "codec", "inspect", "broken:1")
    assert r.returncode == 2
    assert "failed to load: ImportError: this plug-in needs libfoo" in r.stderr, r.stderr
    ok = run(plugin_path, "-m", "orbitfl.cli", "codec", "inspect", "absmax:3")
    assert ok.returncode == 0, ok.stderr


def test_a_plugin_cannot_replace_a_builtin(plugin_path: Path) -> None:
    code = (
        "from orbitfl.codec import REGISTRY, parse_recipe\n"
        "from orbitfl.codec.plugins import load_plugins\n"
        "from orbitfl.codec.stages import Quant\n"
        "failures = load_plugins()\n"
        "assert REGISTRY['quant'] is Quant, REGISTRY['quant']\n"
        "print(failures['quant'])\n"
    )
    r = run(plugin_path, "-c", code)
    assert r.returncode == 0, r.stderr
    assert "already registered" in r.stdout


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_plugin_round_trips_through_the_wire_on_both_backends(plugin_path: Path, backend: str) -> None:
    code = f"""
import json, numpy as np
from orbitfl.codec import Payload, PayloadLimits, Pipeline, entropy_report
rng = np.random.default_rng(0)
t = {{"w": rng.standard_normal((64, 33)).astype(np.float32), "b": rng.standard_normal(7).astype(np.float32)}}
pipe = Pipeline.parse("absmax:4 | zstd", backend="{backend}")
p = pipe.encode(t, pipe.new_state())
back = pipe.decode(Payload.from_wire(p.to_wire(), limits=PayloadLimits()))
err = max(float(np.max(np.abs(back[k] - t[k])) / np.max(np.abs(t[k]))) for k in t)
ent = entropy_report(p)
print(json.dumps({{"err": err, "entropy": ent.entropy_bytes, "n": sum(v.size for v in t.values())}}))
"""
    r = run(plugin_path, "-c", code)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["err"] <= 0.5 / 7 + 1e-6  # half a step of 4-bit symmetric codes
    # 4-bit codes of Gaussian data: between 1 and 4 bits of entropy per value.
    assert out["n"] / 8 < out["entropy"] < out["n"] / 2


def test_bench_reports_the_plugin_with_its_entropy(plugin_path: Path) -> None:
    r = run(
        plugin_path,
        "-m",
        "orbitfl.cli",
        "codec",
        "bench",
        "--recipe",
        "absmax:4",
        "--size",
        "20000",
        "--repeats",
        "1",
        "--no-sklearn",
        "--kmeans-values",
        "256",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    row = next(x for x in json.loads(r.stdout) if x.get("recipe") == "absmax:4")
    assert 1.0 < 8 * row["entropy_bytes"] / row["values"] < 4.0, row
