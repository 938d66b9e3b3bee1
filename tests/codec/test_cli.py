"""`orbitfl codec bench --json` and `orbitfl codec inspect` run as a user would run them."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

KEYS = {
    "recipe",
    "ratio",
    "bits_per_param",
    "rel_error",
    "encode_gbps",
    "decode_gbps",
    "ref_encode_gbps",
    "memcpy_gbps",
}


# This interpreter, or under emulated aarch64 the emulated one (tools/cross/aarch64.py sets it).
CHILD_PYTHON = shlex.split(os.environ.get("ORBITFL_CHILD_PYTHON", "")) or [sys.executable]


def orbitfl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHILD_PYTHON, "-m", "orbitfl.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_bench_json_rows_are_sane() -> None:
    res = orbitfl(
        "codec",
        "bench",
        "--json",
        "--size",
        "30000",
        "--repeats",
        "1",
        "--kmeans-values",
        "5000",
        "--recipe",
        "fp32",
        "--recipe",
        "fp16",
        "--recipe",
        "quant:4|zstd",
        "--recipe",
        "efsign",
        "--recipe",
        "alq",
        "--recipe",
        "coreset:16",
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    recipes = {r["recipe"]: r for r in rows if r["kind"] == "recipe"}
    assert list(recipes) == ["fp32", "fp16", "quant:4|zstd:3", "efsign", "alq", "coreset:16"]
    for r in rows:
        if r["kind"] == "kmeans":
            continue
        assert set(r) >= KEYS, r
        assert r["ratio"] > 0 and math.isclose(r["bits_per_param"], 32 / r["ratio"], rel_tol=1e-9)
        for k in ("encode_gbps", "decode_gbps", "ref_encode_gbps", "memcpy_gbps"):
            assert math.isfinite(r[k]) and r[k] > 0, (r["recipe"], k)
        assert 0 <= r["rel_error"] < 1.5
    assert recipes["fp32"]["rel_error"] == 0 and 0.99 < recipes["fp32"]["ratio"] <= 1
    assert 1.9 < recipes["fp16"]["ratio"] <= 2 and 0 < recipes["fp16"]["rel_error"] < 1e-3
    assert recipes["quant:4|zstd:3"]["ratio"] > 6
    assert recipes["efsign"]["bits_per_param"] < 1.2
    assert recipes["alq"]["bits_per_param"] <= 2.0  # the default budget: 2 bits per parameter
    km = [r for r in rows if r["kind"] == "kmeans"]
    assert {r["k"] for r in km} == {16, 256}
    for r in km:
        assert r["sse"] >= 0 and r["time_s"] > 0
        if r["sklearn_sse"] is not None:  # scikit-learn is the bench extra
            assert r["sse"] <= r["sklearn_sse"] * 1.05


@pytest.mark.host_only
def test_bench_reads_an_npz_and_prints_a_table(tmp_path: Path) -> None:
    path = tmp_path / "update.npz"
    rng = np.random.default_rng(0)
    np.savez(path, w=rng.normal(size=(50, 40)).astype(np.float32), b=rng.normal(size=40), labels=np.arange(3))
    res = orbitfl(
        "codec",
        "bench",
        "--npz",
        str(path),
        "--recipe",
        "quant:8",
        "--repeats",
        "1",
        "--kmeans-values",
        "1000",
        "--no-sklearn",
    )
    assert res.returncode == 0, res.stderr
    assert "2 tensors, 2040 float32 values" in res.stdout
    assert "quant:8" in res.stdout and "memcpy" in res.stdout


@pytest.mark.host_only
def test_bench_and_inspect_refuse_bad_input(tmp_path: Path) -> None:
    res = orbitfl("codec", "bench", "--recipe", "quant:9")
    assert res.returncode == 2 and "bits=9 must be in 1..8" in res.stderr
    res = orbitfl("codec", "bench", "--npz", str(tmp_path / "missing.npz"))
    assert res.returncode == 2 and "missing.npz" in res.stderr
    res = orbitfl("codec", "inspect", "zstd|quant:4")
    assert res.returncode == 2 and "after a byte stage" in res.stderr
    res = orbitfl("codec", "inspect", "topk:0.01+ef|quant:4|zstd; *.bias=fp32")
    assert res.returncode == 0
    assert res.stdout.splitlines()[0] == "topk:0.01+ef|quant:4|zstd:3; *.bias=fp32"
