"""OnboardModel over LiteRT: loading, running, forcing a runtime, and refusing bad input.

tflite-runtime (numpy<2, a second environment) is exercised in
tests/models/test_tflite_export.py::test_tflite_runtime_in_numpy1_environment_matches.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")

from orbitfl.agent import inference
from orbitfl.agent.inference import InvalidModelError, OnboardModel, RuntimeUnavailableError
from orbitfl.models import zoo
from orbitfl.models.tflite import export_tflite
from orbitfl.ort_import import onnxruntime


def ort_run(model: Any, x: np.ndarray) -> np.ndarray:
    sess = onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {"input": x})[0]
    return out


@pytest.fixture(scope="module")
def lenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[zoo.ModelSpec, Path, Path]:
    spec = zoo.build("lenet-s")
    d = tmp_path_factory.mktemp("lenet")
    calib = np.random.default_rng(0).random((200, 1, 8, 8), dtype=np.float32)
    return (
        spec,
        export_tflite(spec.model, d / "f32.tflite"),
        export_tflite(spec.model, d / "i8.tflite", mode="int8", calibration=calib),
    )


def test_litert_runs_float_and_int8_with_any_batch_size(lenet: tuple[zoo.ModelSpec, Path, Path]) -> None:
    spec, f32, i8 = lenet
    m = OnboardModel(f32, runtime="litert")
    assert m.runtime == "litert"
    specs = [(s.name, s.shape, s.dtype) for s in m.inputs]
    assert specs == [("input", (None, 1, 8, 8), np.dtype(np.float32))]
    assert [(s.name, s.shape) for s in m.outputs] == [("output", (None, 10))]
    rng = np.random.default_rng(4)
    for n in (1, 5, 64, 3):  # the batch dimension is resized as needed, also back to smaller
        x = rng.random((n, 1, 8, 8), dtype=np.float32)
        np.testing.assert_allclose(m.predict(x), ort_run(spec.model, x), rtol=1e-5, atol=1e-5)
    q = OnboardModel(i8, runtime="litert")
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    got = q.run(x)[0]
    assert got.dtype == np.float32 and got.shape == (20, 10)
    assert np.abs(got - ort_run(spec.model, x)).max() < 0.05  # int8 is close, not equal
    assert "litert" in repr(q) and "input(N, 1, 8, 8)" in repr(q)


def test_runtime_can_be_forced_by_argument_or_environment(
    lenet: tuple[zoo.ModelSpec, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, f32, _ = lenet
    monkeypatch.setenv(inference.ENV_VAR, "litert")
    assert OnboardModel(f32).runtime == "litert"
    monkeypatch.setenv(inference.ENV_VAR, "onnx")
    with pytest.raises(ValueError, match="unknown TFLite runtime 'onnx'"):
        OnboardModel(f32)
    with pytest.raises(ValueError, match="unknown TFLite runtime 'tensorflow'"):
        OnboardModel(f32, runtime="tensorflow")
    if int(np.__version__.split(".")[0]) >= 2:
        with pytest.raises(RuntimeUnavailableError, match="tflite-runtime needs numpy<2"):
            OnboardModel(f32, runtime="tflite-runtime")
        assert inference.available_runtimes() == ["litert"]


def test_no_runtime_installed_is_a_clear_error(
    lenet: tuple[zoo.ModelSpec, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, f32, _ = lenet
    # a None entry in sys.modules makes the import fail as for a package that is not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    monkeypatch.delenv(inference.ENV_VAR, raising=False)
    with pytest.raises(RuntimeUnavailableError, match="no TFLite runtime is installed: pip install ai-edge"):
        OnboardModel(f32)
    with pytest.raises(RuntimeUnavailableError, match="litert is not installed"):
        OnboardModel(f32, runtime="litert")


def test_bad_batches_are_refused(lenet: tuple[zoo.ModelSpec, Path, Path]) -> None:
    _, f32, _ = lenet
    m = OnboardModel(f32)
    with pytest.raises(ValueError, match=r"input 'input' expects shape \(N, 1, 8, 8\), got \(4, 64\)"):
        m.run(np.zeros((4, 64), np.float32))
    with pytest.raises(ValueError, match=r"expects shape \(N, 1, 8, 8\), got \(4, 1, 8, 9\)"):
        m.run(np.zeros((4, 1, 8, 9), np.float32))
    with pytest.raises(TypeError, match="input 'input' must be float32, got float64"):
        m.run(np.zeros((4, 1, 8, 8)))
    with pytest.raises(TypeError, match="must be a numpy array, not list"):
        m.run([[0.0] * 64])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the batch is empty"):
        m.run(np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"1 input\(s\), got 2 array\(s\)"):
        m.run(np.zeros((1, 1, 8, 8), np.float32), np.zeros((1, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="num_threads must be a positive integer"):
        OnboardModel(f32, num_threads=0)
    # the model still works after refusing bad input
    assert m.predict(np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


def test_missing_and_corrupted_files_are_refused(
    lenet: tuple[zoo.ModelSpec, Path, Path], tmp_path: Path
) -> None:
    _, f32, _ = lenet
    with pytest.raises(FileNotFoundError, match="TFLite model not found"):
        OnboardModel(tmp_path / "nope.tflite")
    with pytest.raises(InvalidModelError, match="is not a file"):
        OnboardModel(tmp_path)
    raw = f32.read_bytes()
    cases = {
        "empty": b"",
        "onnx": zoo.build("mlp").model.SerializeToString(),  # a real model, but not TFLite
        "truncated": raw[: len(raw) // 2],
        "scrambled": raw[:8] + bytes(np.random.default_rng(5).integers(0, 256, len(raw) - 8, dtype=np.uint8)),
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.tflite"
        bad.write_bytes(data)
        with pytest.raises(InvalidModelError, match=str(bad.name)):
            OnboardModel(bad, runtime="litert")
