"""`orbitfl simulate` and `orbitfl demo` on the user's own ONNX model and .npz."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orbitfl.apps.demo import DemoSettings, write_configs
from orbitfl.cli import main
from orbitfl.runtime.config import load_agent, load_ground

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def _model(path: Path, features: int = 6, classes: int = 3) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (features, classes)).astype(np.float32), "head.w")
    b = numpy_helper.from_array(np.zeros(classes, np.float32), "head.b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "head.w"], ["z"], name="mm"),
            helper.make_node("Add", ["z", "head.b"], ["logits"], name="add"),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", classes])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _data(path: Path, features: int = 6) -> Path:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    x = rng.normal(0, 1, (600, features)).astype(np.float32)
    x[np.arange(600), y] += 3.0  # the class is the feature that stands out
    np.savez(path, x=x, y=y)
    return path


def test_simulate_trains_your_own_model_on_your_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = _model(tmp_path / "own.onnx"), _data(tmp_path / "own.npz")
    (tmp_path / "sim.toml").write_text("[sim]\nlr = 0.01\nepochs = 2\n")
    args = ["simulate", "--config", str(tmp_path / "sim.toml"), "--model", str(model), "--dataset", str(data)]
    assert main([*args, "--sats", "3", "--planes", "1", "--orbits", "16", "--rounds", "4", "--json"]) == 0
    out = capsys.readouterr().out
    assert "own.onnx on " in out and "own.npz" in out
    final = float(out.rsplit('"final_accuracy": ', 1)[1].split(",")[0])
    assert final > 0.6  # three classes: chance is a third


def test_simulate_refuses_data_that_does_not_fit_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = _model(tmp_path / "own.onnx"), _data(tmp_path / "own.npz", features=7)
    assert main(["simulate", "--model", str(model), "--dataset", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "x has shape (600, 7)" in err and "(6,)" in err
    good = _data(tmp_path / "good.npz")
    assert main(["simulate", "--model", str(model), "--dataset", str(good), "--trainable", "nope"]) == 2
    assert "no parameter matches 'nope'" in capsys.readouterr().err


def test_demo_configs_carry_your_model_and_data(tmp_path: Path) -> None:
    model, data = _model(tmp_path / "own.onnx"), _data(tmp_path / "own.npz")
    s = DemoSettings(agents=2, rounds=3, model=str(model), data=str(data), insecure=True)
    (tmp_path / "work").mkdir()
    ground, agents = write_configs(tmp_path / "work", s)
    g = load_ground(ground)
    assert g.federation.model == str(model) and g.federation.eval_dataset == str(data)
    for cfg in agents:
        a = load_agent(cfg)
        assert a.train.model == str(model) and a.data.dataset == str(data)
        assert tomllib.loads(cfg.read_text())["inference"]["export_tflite"] is False
    with pytest.raises(ValueError, match=r"--model: .* does not exist"):
        DemoSettings(model=str(tmp_path / "missing.onnx"))


def test_experiment_takes_your_model_and_data_relative_to_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _model(tmp_path / "own.onnx")
    _data(tmp_path / "own.npz")
    cfg = tmp_path / "exp.toml"
    cfg.write_text(
        '[experiment]\nseeds = [0]\n[base]\nmodel = "own.onnx"\nsats = 3\nplanes = 1\nrounds = 2\n'
        'orbits = 10\nlr = 0.01\n[[datasets]]\ndataset = "own.npz"\npartition = "iid"\n'
        '[[recipes]]\nname = "fp32"\ncodec = "fp32"\n'
    )
    out = tmp_path / "report"
    assert main(["experiment", "--config", str(cfg), "--report", str(out)]) == 0, capsys.readouterr().err
    assert "own.npz/iid" in capsys.readouterr().out
