"""`orbitfl bench training` runs each backend in its own process and reports the promised rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orbitfl.ort_import import OrtUnavailableError, training_api
from orbitfl.training_bench import torch_available

try:
    training_api()
except OrtUnavailableError as exc:
    pytest.skip(str(exc), allow_module_level=True)


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
    assert [(r["model"], r["backend"]) for r in rows] == [("mlp", "onnxruntime"), ("mlp", "pytorch")]
    ort = rows[0]
    assert {"model", "backend", "sec_per_epoch", "peak_rss_mib", "accuracy"} <= set(ort)
    assert ort["sec_per_epoch"] > 0 and 10 < ort["peak_rss_mib"] < 4096 and 0.5 < ort["accuracy"] <= 1
    if torch_available():
        assert rows[1]["peak_rss_mib"] > 0 and 0.5 < rows[1]["accuracy"] <= 1
    else:
        assert rows[1]["sec_per_epoch"] is None and "not installed" in rows[1]["skipped"]


def test_bench_refuses_unknown_models() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "bench", "training", "--models", "vgg"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "unknown model(s) ['vgg']" in proc.stderr
