"""A real ground that ran more rounds than it keeps: its state folder holds what retention says, and
`orbitfl ground export-model` writes a version that ONNX Runtime scores as the ground's evaluation did."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.data.datasets import load
from orbitfl.data.metrics import accuracy
from orbitfl.models import zoo
from orbitfl.ort_import import onnxruntime

pytestmark = pytest.mark.integration

ROUNDS, KEEP, EVERY = 5, 2, 4


def held_versions(state: Path) -> set[int]:
    db = sqlite3.connect(state / "ground.db")
    try:
        return {
            int(r[0]) for r in db.execute("SELECT model_version FROM agents WHERE model_version IS NOT NULL")
        }
    finally:
        db.close()


def stored(state: Path) -> list[int]:
    return sorted(int(p.stem[1:]) for p in (state / "models").glob("v*.msgpack"))


def orbitfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", *args], capture_output=True, text=True, timeout=180
    )


def onnx_accuracy(path: Path, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    ort = onnxruntime()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = x.reshape((len(x), *[d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape[1:]]))
    return accuracy(sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0], y)


def test_a_ground_past_keep_models_keeps_only_what_retention_says_and_exports_a_version(cluster: Any) -> None:
    c = cluster
    cfg = c.ground_config(
        rounds=ROUNDS, min_updates=1, keep_models=KEEP, keep_every=EVERY, eval_dataset="digits"
    )
    c.agent_config("sat-0", 0, 1)
    c.start_ground()
    c.start_agent("sat-0")
    c.wait(f"{ROUNDS} rounds", lambda: len(c.rounds()) >= ROUNDS, 120)
    assert c.stop()["ground"] == 0
    state = c.root / "ground"
    newest = ROUNDS
    expected = {v for v in range(newest + 1) if v > newest - KEEP or v % EVERY == 0} | held_versions(state)
    assert set(stored(state)) == expected
    assert len(stored(state)) < newest + 1, "nothing was deleted"

    out = c.root / "export"
    version = max(v for v in expected if v % EVERY == 0 and v > 0)  # an old version retention keeps
    res = orbitfl(
        "ground", "export-model", "--config", str(cfg), "--version", str(version), "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    onnx_file = out / f"model-v{version}.onnx"
    assert {onnx_file, out / f"model-v{version}.tflite", out / f"model-v{version}-int8.tflite"} <= set(
        out.iterdir()
    )
    data = load("digits", seed=0)
    ground_acc = {r["version"]: r["accuracy"] for r in c.rounds()}[version]
    assert onnx_accuracy(onnx_file, data.x_test, data.y_test) == pytest.approx(ground_acc, abs=1e-9)
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from orbitfl.agent.inference import OnboardModel

        x = data.x_test.reshape((len(data.x_test), *zoo.resolve("mlp").input_shape)).astype(np.float32)
        for name, tol in ((f"model-v{version}.tflite", 1e-6), (f"model-v{version}-int8.tflite", 0.05)):
            got = accuracy(OnboardModel(out / name).run(x)[0], data.y_test)
            assert abs(got - ground_acc) <= tol, (name, got, ground_acc)

    pruned = min(set(range(newest + 1)) - expected)
    res = orbitfl("ground", "export-model", "--config", str(cfg), "--version", str(pruned), "--out", str(out))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"v{pruned} is not stored" in res.stderr and "Traceback" not in res.stderr
