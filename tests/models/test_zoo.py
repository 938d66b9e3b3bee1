"""The zoo's ONNX graphs: valid, named, runnable in ONNX Runtime, restricted to the exportable ops."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")  # the zoo needs onnx (the `train` extra)
if importlib.util.find_spec("onnxruntime") is None:
    pytest.skip("onnxruntime is not installed", allow_module_level=True)
from orbitfl.models import zoo  # noqa: E402
from orbitfl.ort_import import onnxruntime  # noqa: E402

TFLITE_OPS = {"Gemm", "Relu", "Conv", "MaxPool", "Flatten", "Reshape", "Softmax", "Add", "MatMul"}
CASES = [
    ("mlp", {}),
    ("mlp", {"input": "28x28", "hidden": [64, 32]}),
    ("lenet-s", {}),
    ("lenet-s", {"input": "28x28"}),
    ("spectral-cnn", {}),
    ("spectral-cnn", {"input": "100", "classes": 3}),
    ("moe", {}),
]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    ort = onnxruntime()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {zoo.INPUT: x})[0])


@pytest.mark.parametrize(("name", "options"), CASES)
def test_models_are_valid_and_run_with_any_batch(name: str, options: dict[str, object]) -> None:
    spec = zoo.build(name, **options)
    onnx.checker.check_model(spec.model, full_check=True)
    for batch in (1, 7):
        x = np.random.default_rng(0).random((batch, *spec.input_shape), dtype=np.float32)
        y = run(spec.model, x)
        assert y.shape == (batch, spec.num_outputs)
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("name", ["mlp", "lenet-s", "spectral-cnn"])
@pytest.mark.parametrize("size", [None, "28x28"])
def test_exportable_models_use_only_ops_the_tflite_exporter_maps(name: str, size: str | None) -> None:
    if name == "spectral-cnn" and size:
        size = "64"
    spec = zoo.build(name, input=size)
    ops = {n.op_type for n in spec.model.graph.node}
    assert ops <= TFLITE_OPS, ops - TFLITE_OPS
    gemms = [n for n in spec.model.graph.node if n.op_type == "Gemm"]
    assert gemms and all({a.name: a.i for a in g.attribute}.get("transB") == 1 for g in gemms)


def test_parameter_names_are_stable_and_meaningful() -> None:
    assert zoo.build("mlp").parameter_names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    lenet = zoo.build("lenet-s", input="28x28")
    assert zoo.parameter_shapes(lenet.model) == {
        "conv1.weight": (6, 1, 5, 5),
        "conv1.bias": (6,),
        "conv2.weight": (16, 6, 5, 5),
        "conv2.bias": (16,),
        "fc1.weight": (120, 400),
        "fc1.bias": (120,),
        "fc2.weight": (84, 120),
        "fc2.bias": (84,),
        "fc3.weight": (10, 84),
        "fc3.bias": (10,),
    }
    moe = zoo.build("moe", experts=3)
    assert moe.groups["expert.2"] == [
        "expert.2.fc1.weight",
        "expert.2.fc1.bias",
        "expert.2.fc2.weight",
        "expert.2.fc2.bias",
    ]
    assert set(moe.parameter_names) == {n for g in moe.groups.values() for n in g}
    # Same seed, same weights; another seed, other weights.
    a, b, c = (zoo.get_weights(zoo.build("mlp", seed=s).model) for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["fc1.weight"], c["fc1.weight"])


def test_moe_output_is_the_gate_weighted_sum_of_experts() -> None:
    spec = zoo.build("moe", experts=3, hidden=8)
    w = zoo.get_weights(spec.model)
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    gates = zoo.moe_gates(w, x)
    expect = np.zeros((5, 10), np.float32)
    for i in range(3):
        h = np.maximum(x @ w[f"expert.{i}.fc1.weight"].T + w[f"expert.{i}.fc1.bias"], 0)
        expect += gates[:, i : i + 1] * (h @ w[f"expert.{i}.fc2.weight"].T + w[f"expert.{i}.fc2.bias"])
    np.testing.assert_allclose(run(spec.model, x), expect, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, rtol=1e-6)


def test_write_inference_model_with_given_weights(tmp_path: Path) -> None:
    spec = zoo.build("mlp")
    w = {k: np.full_like(v, 0.01) for k, v in zoo.get_weights(spec.model).items()}
    path = zoo.write_inference_model(spec, tmp_path / "sub" / "m.onnx", w)
    loaded = onnx.load(str(path))
    assert all(np.array_equal(v, w[k]) for k, v in zoo.get_weights(loaded).items())
    x = np.ones((2, 64), np.float32)
    # every logit: 0.01 * sum(relu(0.01 * 64 + 0.01)) over 128 units + 0.01
    np.testing.assert_allclose(run(loaded, x), np.full((2, 10), 0.01 * 128 * 0.65 + 0.01), rtol=1e-5)
    assert zoo.get_weights(spec.model)["fc1.weight"][0, 0] != 0.01  # the original is untouched


def test_unknown_model_lists_the_zoo() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*mlp, lenet-s, spectral-cnn, moe"):
        zoo.build("resnet")


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("lenet-s", {"input": "4x4"}, "at least 8x8"),
        ("lenet-s", {"input": "8x9"}, "square"),
        ("mlp", {"input": "eight"}, "not of the form"),
        ("mlp", {"hidden": [0]}, "positive"),
        ("spectral-cnn", {"kernel": 4}, "odd"),
        ("moe", {"experts": 0}, "experts"),
        ("mlp", {"experts": 3}, "model 'mlp'"),
    ],
)
def test_bad_options_are_refused(name: str, options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zoo.build(name, **options)


def test_weight_checks_name_the_parameter() -> None:
    spec = zoo.build("mlp")
    w = zoo.get_weights(spec.model)
    with pytest.raises(ValueError, match=r"unknown parameter 'fc9.weight'"):
        zoo.with_weights(spec.model, {"fc9.weight": w["fc1.weight"]})
    with pytest.raises(TypeError, match=r"'fc1.bias'.*float32.*float64"):
        zoo.with_weights(spec.model, {"fc1.bias": w["fc1.bias"].astype(np.float64)})
    with pytest.raises(ValueError, match=r"'fc2.weight'.*\(10, 128\).*\(128, 10\)"):
        zoo.with_weights(spec.model, {"fc2.weight": w["fc2.weight"].T.copy()})
    with pytest.raises(ValueError, match=r"'fc2.bias'.*NaN"):
        zoo.with_weights(spec.model, {"fc2.bias": np.full(10, np.nan, np.float32)})


def test_select_parameters_by_name_glob_and_prefix() -> None:
    names = zoo.build("moe", experts=3).parameter_names
    assert zoo.select_parameters(names, None) == names
    assert zoo.select_parameters(names, ["router.bias"]) == ["router.bias"]
    assert zoo.select_parameters(names, ["expert.1"]) == [n for n in names if n.startswith("expert.1.")]
    assert zoo.select_parameters(names, ["expert.*.fc2.bias"]) == [f"expert.{i}.fc2.bias" for i in range(3)]
    with pytest.raises(ValueError, match=r"no parameter matches 'expert.7'"):
        zoo.select_parameters(names, ["expert.0", "expert.7"])
    spec = zoo.build("moe", experts=3)
    assert zoo.expert_parameters(spec, [2]) == spec.groups["expert.2"]
    with pytest.raises(ValueError, match=r"expert 5 does not exist.*0\.\.2"):
        zoo.expert_parameters(spec, [5])


def test_user_model_is_loaded_with_its_parameters(tmp_path: Path) -> None:
    path = tmp_path / "mine.onnx"
    onnx.save(zoo.build("mlp", hidden=[16], seed=3).model, str(path))
    spec = zoo.load_user_model(path)
    assert spec.parameter_names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert spec.input_shape == (64,) and spec.num_outputs == 10
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"not a valid ONNX model"):
        zoo.load_user_model(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match=r"does not exist"):
        zoo.load_user_model(tmp_path / "missing.onnx")
