"""`orbitfl model export-tflite`: a real process for the main paths, main() for the refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")

from orbitfl.agent.inference import OnboardModel  # noqa: E402
from orbitfl.cli import main  # noqa: E402
from orbitfl.models import zoo  # noqa: E402
from orbitfl.ort_import import onnxruntime  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    spec = zoo.build("lenet-s")
    onnx.save(spec.model, str(d / "lenet.onnx"))
    # "trained" weights: the initial ones scaled, so that using them (or not) shows in the outputs
    weights = {k: (v * 1.5).astype(np.float32) for k, v in zoo.get_weights(spec.model).items()}
    np.savez(d / "w.npz", **weights)
    np.save(d / "calib.npy", np.random.default_rng(0).random((50, 64)))  # float64, flat: reshaped
    return {"dir": d, "onnx": d / "lenet.onnx", "weights": d / "w.npz", "calib": d / "calib.npy"}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitfl.cli", "model", "export-tflite", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_export_float_and_int8_from_the_command_line(files: dict[str, Path]) -> None:
    d = files["dir"]
    f32 = cli("--onnx", str(files["onnx"]), "--weights", str(files["weights"]), "--out", str(d / "f.tflite"))
    assert f32.returncode == 0, f32.stderr
    assert "float32" in f32.stdout
    i8 = cli(
        "--onnx",
        str(files["onnx"]),
        "--weights",
        str(files["weights"]),
        "--out",
        str(d / "q.tflite"),
        "--int8",
        "--calibration-data",
        "digits",
    )
    assert i8.returncode == 0, i8.stderr
    assert "int8 (per-channel weights)" in i8.stdout

    model = zoo.with_weights(zoo.build("lenet-s").model, dict(np.load(files["weights"])))
    x = np.random.default_rng(1).random((16, 1, 8, 8), dtype=np.float32)
    sess = onnxruntime().InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(OnboardModel(d / "f.tflite").predict(x), want, rtol=1e-5, atol=1e-5)
    assert np.abs(OnboardModel(d / "q.tflite").predict(x) - want).max() < 0.1


def test_per_tensor_with_calibration_file(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = files["dir"] / "qt.tflite"
    rc = main(
        [
            "model",
            "export-tflite",
            "--onnx",
            str(files["onnx"]),
            "--out",
            str(out),
            "--int8",
            "--per-tensor",
            "--calibration-data",
            str(files["calib"]),
            "--weight-quantizer",
            "maxabs",
        ]
    )
    assert rc == 0 and "per-tensor" in capsys.readouterr().out
    assert OnboardModel(out).predict(np.zeros((3, 1, 8, 8), np.float32)).shape == (3, 10)


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["--int8"], 2, "--int8 needs --calibration-data"),
        (["--per-tensor"], 2, "only apply with --int8"),
        (["--int8", "--calibration-data", "cifar"], 1, "must be one of digits or an .npy file"),
        (["--int8", "--calibration-data", "missing.npy"], 1, "calibration file not found"),
        (["--weights", "missing.npz"], 1, "weights file not found"),
    ],
)
def test_bad_options_are_refused(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], code: int, message: str
) -> None:
    out = files["dir"] / "x.tflite"
    rc = main(["model", "export-tflite", "--onnx", str(files["onnx"]), "--out", str(out), *extra])
    assert rc == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_inputs_are_named(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> str:
        assert main(["model", "export-tflite", "--out", str(tmp_path / "x.tflite"), *args]) == 1
        return capsys.readouterr().err

    assert "ONNX model not found" in run("--onnx", str(tmp_path / "nope.onnx"))
    np.savez(tmp_path / "bad.npz", **{"conv9.weight": np.zeros(3, np.float32)})
    assert "'conv9.weight' is not a parameter" in run(
        "--onnx", str(files["onnx"]), "--weights", str(tmp_path / "bad.npz")
    )
    np.save(tmp_path / "c.npy", np.zeros((5, 63), np.float32))
    assert "do not fit the model input (N, 1, 8, 8)" in run(
        "--onnx", str(files["onnx"]), "--int8", "--calibration-data", str(tmp_path / "c.npy")
    )
    tanh = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Tanh", ["input"], ["output"], name="squash")],
            "g",
            [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 4])],
            [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["N", 4])],
        )
    )
    onnx.save(tanh, str(tmp_path / "tanh.onnx"))
    err = run("--onnx", str(tmp_path / "tanh.onnx"))
    assert "ONNX operator 'Tanh' (node 'squash') is not supported" in err
    assert not (tmp_path / "x.tflite").exists()
