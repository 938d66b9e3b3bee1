"""`orbitfl bench training` runs each backend in its own process and reports the promised rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orbitfl.apps.training_bench import ortt_python, torch_available


@pytest.mark.integration
def test_bench_rows_side_by_side() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "orbitfl.cli",
            "bench",
            "training",
            "--json",
            "--models",
            "mlp",
            "--epochs",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [(r["model"], r["backend"]) for r in rows] == [
        ("mlp", "onnxruntime"),
        ("mlp", "onnxruntime-training"),
        ("mlp", "pytorch"),
        ("lenet-s-28x28", "agent-daemon"),
    ]
    agent = rows.pop()
    # The real agent daemon closed a lenet-s 28x28 round with a real ground, and its peak was read.
    assert agent.get("skipped") is None, agent
    assert 20 < agent["peak_rss_mib"] < 4096 and agent["target_mib"] == 100.0, agent
    for r in rows:
        assert {"model", "backend", "sec_per_epoch", "cpu_sec_per_epoch", "peak_rss_mib", "accuracy"} <= set(
            r
        )
        if r["sec_per_epoch"] is None:
            assert r["skipped"], r
            continue
        assert r["sec_per_epoch"] > 0 and r["cpu_sec_per_epoch"] > 0, r
        assert 10 < r["peak_rss_mib"] < 4096 and 0.5 < r["accuracy"] <= 1, r
    by = {r["backend"]: r for r in rows}
    assert (by["onnxruntime-training"]["sec_per_epoch"] is None) == (ortt_python() is None)
    assert (by["pytorch"]["sec_per_epoch"] is None) == (not torch_available())
    if not torch_available():
        assert "not installed" in by["pytorch"]["skipped"]


def test_bench_refuses_unknown_models() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "bench", "training", "--models", "vgg"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "unknown model(s) ['vgg']" in proc.stderr
