"""ORT training artifacts (backend "onnxruntime-training") and `orbitfl model build --backend
onnxruntime-training`: files, manifest, trainable sets, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orbitfl.ort_import import OrtUnavailableError, training_api

try:
    training_api()
except OrtUnavailableError as exc:  # e.g. aarch64: no onnxruntime-training wheel
    pytest.skip(str(exc), allow_module_level=True)

import onnx

if tuple(int(v) for v in onnx.__version__.split(".")[:2]) > (1, 17):
    pytest.skip(f"ORT training artifacts need onnx <= 1.17, not {onnx.__version__}", allow_module_level=True)

from orbitfl.cli import main
from orbitfl.models import artifacts, zoo
from orbitfl.models.manifest import FILES, read_manifest

LEGACY = "onnxruntime-training"


def graph_inputs(path: Path) -> list[str]:
    return [i.name for i in onnx.load(str(path)).graph.input]


@pytest.mark.parametrize("name", ["mlp", "lenet-s", "spectral-cnn", "moe"])
def test_build_writes_every_artifact(tmp_path: Path, name: str) -> None:
    spec = zoo.build(name)
    manifest = artifacts.build_artifacts(spec, tmp_path / name, backend=LEGACY)
    for fname in [*FILES.values(), "manifest.json"]:
        assert (tmp_path / name / fname).stat().st_size > 0, fname
    assert read_manifest(tmp_path / name) == manifest
    assert manifest.trainable == spec.parameter_names
    assert manifest.loss == ("mse" if name == "spectral-cnn" else "ce")
    # The training graph takes the data, the target and every parameter.
    inputs = graph_inputs(tmp_path / name / FILES["training"])
    assert inputs[:2] == ["input", "target" if name == "spectral-cnn" else "labels"] and set(
        spec.parameter_names
    ) <= set(inputs)
    assert not list(tmp_path.joinpath(name).glob(".build-*"))


def test_only_named_parameters_get_gradients(tmp_path: Path) -> None:
    spec = zoo.build("moe", experts=3)
    manifest = artifacts.build_artifacts(
        spec, tmp_path, trainable=["expert.1"], optimizer="sgd", backend=LEGACY
    )
    assert manifest.trainable == spec.groups["expert.1"] and manifest.optimizer == "sgd"
    outputs = [o.name for o in onnx.load(str(tmp_path / FILES["training"])).graph.output]
    grads = sorted(o.split("_grad")[0] for o in outputs if "_grad" in o)
    assert grads == sorted(spec.groups["expert.1"])


def test_nonexistent_trainable_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no parameter matches 'fc7.weight'.*fc1.weight"):
        artifacts.build_artifacts(zoo.build("mlp"), tmp_path, trainable=["fc7.weight"])
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'"):
        artifacts.build_artifacts(zoo.build("mlp"), tmp_path, optimizer="adam")
    assert not (tmp_path / "manifest.json").exists()


def test_cli_build_list_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lenet"
    assert (
        main(
            [
                "model",
                "build",
                "lenet-s",
                "--out",
                str(out),
                "--input",
                "28x28",
                "--trainable",
                "fc3",
                "--optimizer",
                "sgd",
                "--backend",
                LEGACY,
            ]
        )
        == 0
    )
    m = read_manifest(out)
    assert m.input_shape == (1, 28, 28) and m.trainable == ["fc3.weight", "fc3.bias"] and m.optimizer == "sgd"
    assert "2 trainable, 8 frozen" in capsys.readouterr().out

    assert main(["model", "build", "alexnet", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model 'alexnet'" in capsys.readouterr().err
    assert main(["model", "build", "mlp", "--out", str(tmp_path / "x"), "--trainable", "fc1.wieght"]) == 2
    assert "no parameter matches 'fc1.wieght'" in capsys.readouterr().err

    assert main(["model", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(zoo.MODEL_NAMES)


def test_cli_builds_a_users_own_onnx_model(tmp_path: Path) -> None:
    own = tmp_path / "own.onnx"
    onnx.save(zoo.build("mlp", hidden=[32], seed=5).model, str(own))
    assert (
        main(
            [
                *["model", "build", str(own), "--out", str(tmp_path / "a")],
                *["--trainable", "fc2.weight", "--backend", LEGACY],
            ]
        )
        == 0
    )
    m = read_manifest(tmp_path / "a")
    assert m.model == "own" and m.trainable == ["fc2.weight"] and m.parameters["fc1.weight"] == (32, 64)
