"""The ONNX -> TFLite exporter, checked against ONNX Runtime and run in LiteRT.

Float models must match ONNX Runtime to 1e-5; int8 models must keep digits test accuracy within
one point of the float model. Weights are trained here on stock ONNX Runtime (GraphTrainer).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("tflite")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("sklearn")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from orbitfl.agent.inference import OnboardModel  # noqa: E402
from orbitfl.models import zoo  # noqa: E402
from orbitfl.models.tflite import UnsupportedOpError, build_graph, export_tflite  # noqa: E402
from orbitfl.models.tflite.reference import evaluate  # noqa: E402

from orbitfl.ort_import import onnxruntime  # noqa: E402

FLOAT_TOL = 1e-5
ROOT = Path(__file__).resolve().parents[2]
# tflite-runtime 2.14 needs numpy<2: it lives in a second environment that tools/dev.py creates.
TFLITE_PYTHON = Path(
    os.environ.get("ORBITFL_TFLITE_RUNTIME_PYTHON", str(ROOT / ".venv-tflite" / "bin" / "python"))
)


def ort_run(model: Any, x: np.ndarray) -> np.ndarray:
    ort = onnxruntime()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return out


def train_ort(
    spec: zoo.ModelSpec, x: np.ndarray, y: np.ndarray, epochs: int, lr: float
) -> dict[str, np.ndarray]:
    """Weights after `epochs` of AdamW on stock ONNX Runtime (the default trainer, cross-entropy)."""
    from orbitfl.agent.backends import open_trainer
    from orbitfl.models.artifacts import build_artifacts

    with tempfile.TemporaryDirectory() as d:
        build_artifacts(spec, d, optimizer="adamw")
        trainer = open_trainer(d, learning_rate=lr)
        trainer.train(x, y, epochs=epochs, batch_size=32, seed=0)
        return trainer.get_weights()


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    test, train = order[:360], order[360:]
    xs = (x / 16.0).astype(np.float32)
    return {"x_train": xs[train], "y_train": y[train].astype(np.int64),
            "x_test": xs[test], "y_test": y[test].astype(np.int64)}


@pytest.fixture(scope="module")
def trained(digits: dict[str, np.ndarray]) -> dict[str, tuple[zoo.ModelSpec, dict[str, np.ndarray]]]:
    out = {}
    for name, epochs in (("mlp", 20), ("lenet-s", 30)):
        spec = zoo.build(name)
        x = digits["x_train"].reshape(-1, *spec.input_shape)
        out[name] = (spec, train_ort(spec, x, digits["y_train"], epochs, lr=3e-3))
    return out


def litert(path: Path, x: np.ndarray) -> np.ndarray:
    return OnboardModel(path, runtime="litert").predict(x)


# --- float --------------------------------------------------------------------------------------

ZOO_CASES = [
    ("mlp", {}), ("mlp", {"input": "8x8"}), ("lenet-s", {}), ("lenet-s", {"input": "28x28"}),
    ("spectral-cnn", {}), ("spectral-cnn", {"classes": 5}),
    ("moe", {}), ("moe", {"input": "8x8", "experts": 2}),
]


@pytest.mark.parametrize(("name", "options"), ZOO_CASES, ids=lambda v: str(v))
def test_float_export_of_every_zoo_model_matches_onnxruntime(
    tmp_path: Path, name: str, options: dict[str, Any]
) -> None:
    spec = zoo.build(name, **options)
    x = np.random.default_rng(1).random((33, *spec.input_shape), dtype=np.float32)
    path = export_tflite(spec.model, tmp_path / "m.tflite")
    got, want = litert(path, x), ort_run(spec.model, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=FLOAT_TOL, atol=FLOAT_TOL)
    # the NumPy evaluator that calibrates int8 ranges computes the same graph
    graph = build_graph(spec.model)
    np.testing.assert_allclose(evaluate(graph, {"input": x})["output"], want, rtol=FLOAT_TOL, atol=FLOAT_TOL)


def test_float_export_with_trained_weights_matches_onnxruntime(
    tmp_path: Path, trained: dict[str, Any], digits: dict[str, np.ndarray]
) -> None:
    for name, (spec, weights) in trained.items():
        x = digits["x_test"].reshape(-1, *spec.input_shape)
        path = export_tflite(spec.model, tmp_path / f"{name}.tflite", weights=weights)
        want = ort_run(zoo.with_weights(spec.model, weights), x)
        np.testing.assert_allclose(litert(path, x), want, rtol=FLOAT_TOL, atol=FLOAT_TOL)
        # the weights really replaced the initial ones
        assert np.abs(ort_run(spec.model, x) - want).max() > 0.1


def _model(nodes: list[Any], inits: dict[str, np.ndarray], in_shape: list[Any], out_shape: list[Any]) -> Any:
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).normal(0, 0.3, shape).astype(np.float32)


def test_float_export_of_1d_conv_odd_padding_matmul_add_softmax(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], kernel_shape=[5], pads=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2], strides=[2]),
        # asymmetric padding has no TFLite padding mode: the exporter inserts a PAD
        helper.make_node("Conv", ["p1", "c2.w"], ["c2"], kernel_shape=[3], strides=[2], pads=[1, 0]),
        helper.make_node("Add", ["c2", "chan_bias"], ["c2b"]),
        helper.make_node("Flatten", ["c2b"], ["f"]),
        helper.make_node("MatMul", ["f", "fc.w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc.b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    inits = {"c1.w": _rand(4, 3, 5), "c1.b": _rand(4), "c2.w": _rand(6, 4, 3), "chan_bias": _rand(6, 1),
             "fc.w": _rand(6 * 8, 5), "fc.b": _rand(5)}
    model = _model(nodes, inits, ["N", 3, 32], ["N", 5])
    x = np.random.default_rng(2).normal(size=(7, 3, 32)).astype(np.float32)
    graph = build_graph(model)
    assert "PAD" in [op.code for op in graph.ops]
    path = export_tflite(model, tmp_path / "c1d.tflite")
    want = ort_run(model, x)
    np.testing.assert_allclose(litert(path, x), want, rtol=FLOAT_TOL, atol=FLOAT_TOL)
    # the same graph in int8 (PAD pads with the zero point, SOFTMAX has its fixed output scale)
    calib = np.random.default_rng(3).normal(size=(300, 3, 32)).astype(np.float32)
    q = export_tflite(model, tmp_path / "c1d.i8.tflite", mode="int8", calibration=calib)
    assert np.abs(litert(q, x) - want).max() < 0.05


def test_reshape_and_fixed_batch(tmp_path: Path) -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "to2d"], ["r"]),  # [0, -1]: copy the batch, flatten the rest
        helper.make_node("Gemm", ["r", "fc", "fcb"], ["h"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Reshape", ["h", "to3d"], ["y"]),
    ]
    inits = {"w": _rand(2, 1, 3, 3), "b": _rand(2), "to2d": np.array([0, -1], np.int64),
             "fc": _rand(6, 2 * 5 * 5), "fcb": _rand(6), "to3d": np.array([-1, 2, 3], np.int64)}
    x = np.random.default_rng(4).normal(size=(5, 1, 5, 5)).astype(np.float32)
    dynamic = _model(nodes, inits, ["N", 1, 5, 5], ["N", 2, 3])
    np.testing.assert_allclose(litert(export_tflite(dynamic, tmp_path / "d.tflite"), x), ort_run(dynamic, x),
                               rtol=FLOAT_TOL, atol=FLOAT_TOL)
    fixed = _model(nodes, inits, [1, 1, 5, 5], [1, 2, 3])  # batch 1: OnboardModel runs sample by sample
    path = export_tflite(fixed, tmp_path / "f.tflite")
    assert OnboardModel(path).inputs[0].shape == (1, 1, 5, 5)
    want = np.concatenate([ort_run(fixed, x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(litert(path, x), want, rtol=FLOAT_TOL, atol=FLOAT_TOL)


def test_flatten_after_conv_keeps_onnx_channel_order(tmp_path: Path) -> None:
    """A dense layer after Flatten sees C,H,W order; an NHWC flatten would scramble it."""
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0, 0] = w[1, 1] = w[2, 0] = 1.0
    fc = np.arange(3 * 4 * 5, dtype=np.float32).reshape(1, -1)  # a different weight per position
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    model = _model(nodes, {"w": w, "fc": fc}, ["N", 2, 4, 5], ["N", 1])
    x = np.random.default_rng(3).normal(size=(4, 2, 4, 5)).astype(np.float32)
    path = export_tflite(model, tmp_path / "flat.tflite")
    np.testing.assert_allclose(litert(path, x), ort_run(model, x), rtol=FLOAT_TOL, atol=1e-4)


# --- int8 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_quantizer", ["laq", "maxabs"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_int8_accuracy_within_one_point_of_float_on_digits(
    tmp_path: Path, trained: dict[str, Any], digits: dict[str, np.ndarray], per_channel: bool,
    weight_quantizer: str,
) -> None:
    for name, (spec, weights) in trained.items():
        shape = spec.input_shape
        x_test = digits["x_test"].reshape(-1, *shape)
        calib = digits["x_train"][:400].reshape(-1, *shape)
        f32 = export_tflite(spec.model, tmp_path / f"{name}.f32.tflite", weights=weights)
        i8 = export_tflite(spec.model, tmp_path / f"{name}.i8.tflite", weights=weights, mode="int8",
                           per_channel=per_channel, calibration=calib, weight_quantizer=weight_quantizer)
        acc_f = float((litert(f32, x_test).argmax(1) == digits["y_test"]).mean())
        acc_q = float((litert(i8, x_test).argmax(1) == digits["y_test"]).mean())
        assert acc_f >= 0.93, f"{name}: float model undertrained ({acc_f:.3f})"
        assert abs(acc_f - acc_q) <= 0.01, f"{name} ({per_channel=}): float {acc_f:.4f} vs int8 {acc_q:.4f}"
        assert i8.stat().st_size < 0.5 * f32.stat().st_size


def test_int8_model_is_integer_inside_with_tflite_scale_rules(tmp_path: Path, trained: dict[str, Any],
                                                             digits: dict[str, np.ndarray]) -> None:
    spec, weights = trained["lenet-s"]
    calib = digits["x_train"][:200].reshape(-1, *spec.input_shape)
    graph = build_graph(spec.model, weights=weights, mode="int8", calibration=calib)
    codes = [op.code for op in graph.ops]
    assert codes[0] == "QUANTIZE" and codes[-1] == "DEQUANTIZE"
    t = graph.tensors
    for op in graph.ops:
        if op.code in ("FULLY_CONNECTED", "CONV_2D"):
            x, w, b = (t[n] for n in op.inputs)
            assert w.dtype == "int8" and w.quant is not None and not w.quant.zero_point.any()
            assert w.data is not None and np.abs(w.data.astype(int)).max() <= 127
            assert len(w.quant.scale) == w.shape[0]  # per channel by default
            assert b.dtype == "int32" and b.quant is not None and x.quant is not None
            np.testing.assert_allclose(b.quant.scale, x.quant.scale[0] * w.quant.scale, rtol=1e-6)
        if op.code in ("MAX_POOL_2D", "RESHAPE", "TRANSPOSE"):
            src, dst = t[op.inputs[0]].quant, t[op.outputs[0]].quant
            assert src is not None and dst is not None
            assert src.scale[0] == dst.scale[0] and src.zero_point[0] == dst.zero_point[0]


def test_int8_weights_come_from_the_laq_kernel(
    trained: dict[str, Any], digits: dict[str, np.ndarray]
) -> None:
    """Codes and scales are orbitfl._core.laq_quantize's, and fit better than max|w|/127."""
    from orbitfl.models.tflite.quantize import maxabs_quantizer, quantize_weights

    from orbitfl import _core

    spec, weights = trained["lenet-s"]
    calib = digits["x_train"][:100].reshape(-1, *spec.input_shape)
    graph = build_graph(spec.model, weights=weights, mode="int8", calibration=calib)
    w = weights["fc1.weight"]
    q = graph.tensors["fc1.weight"]
    assert q.data is not None and q.quant is not None
    for row in (0, 7, len(w) - 1):
        packed, alpha, _ = _core.laq_quantize(w[row].copy(), np.ones_like(w[row]), 8)
        np.testing.assert_array_equal(q.data[row], _core.unpack_bits(packed, w.shape[1], 8).astype(int) - 127)
        assert q.quant.scale[row] == np.float32(alpha / 127)
    laq_codes, laq_scales = q.data, q.quant.scale
    max_codes, max_scales = quantize_weights(w, True, maxabs_quantizer)
    err_laq = ((laq_codes * laq_scales[:, None] - w) ** 2).sum(axis=1)
    err_max = ((max_codes * max_scales[:, None] - w) ** 2).sum(axis=1)
    assert (err_laq <= err_max * (1 + 1e-5)).all() and err_laq.sum() < err_max.sum()


# --- the file itself ----------------------------------------------------------------------------


def test_file_layout_follows_the_tflite_rules(tmp_path: Path, trained: dict[str, Any],
                                              digits: dict[str, np.ndarray]) -> None:
    import tflite

    spec, weights = trained["lenet-s"]
    calib = digits["x_train"][:100].reshape(-1, *spec.input_shape)
    for mode in ("float", "int8"):
        path = export_tflite(spec.model, tmp_path / f"{mode}.tflite", weights=weights, mode=mode,
                             calibration=calib if mode == "int8" else None)
        raw = path.read_bytes()
        assert raw[4:8] == b"TFL3"
        m = tflite.Model.GetRootAsModel(raw, 0)
        assert m.Version() == 3
        assert m.Buffers(0).DataLength() == 0  # the empty sentinel
        with_data = [m.Buffers(i) for i in range(1, m.BuffersLength()) if m.Buffers(i).DataLength()]
        assert len(with_data) == m.BuffersLength() - 1
        base = np.frombuffer(raw, np.uint8).ctypes.data
        for buf in with_data:
            assert (buf.DataAsNumpy().ctypes.data - base) % 16 == 0  # offset of the data in the file
        for i in range(m.OperatorCodesLength()):
            oc = m.OperatorCodes(i)
            assert oc.BuiltinCode() == oc.DeprecatedBuiltinCode()  # both fields; all codes here are < 127
        sg = m.Subgraphs(0)
        inp = sg.Tensors(sg.Inputs(0))
        assert inp.ShapeSignatureAsNumpy().tolist() == [-1, 1, 8, 8]
        assert inp.Type() == tflite.TensorType.FLOAT32
        assert sg.Tensors(sg.Outputs(0)).Type() == tflite.TensorType.FLOAT32


def test_export_is_deterministic_and_atomic(tmp_path: Path) -> None:
    spec = zoo.build("mlp")
    a = export_tflite(spec.model, tmp_path / "a.tflite").read_bytes()
    b = export_tflite(spec.model, tmp_path / "a.tflite").read_bytes()
    assert a == b
    assert [p.name for p in tmp_path.iterdir()] == ["a.tflite"]  # no temporary file left behind


# --- bad input ----------------------------------------------------------------------------------


def test_unsupported_operator_is_named(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1, name="fc"),
             helper.make_node("Sigmoid", ["h"], ["y"], name="gate")]
    model = _model(nodes, {"w": _rand(3, 4)}, ["N", 4], ["N", 3])
    with pytest.raises(UnsupportedOpError, match=r"'Sigmoid' \(node 'gate'\)"):
        export_tflite(model, tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


def test_unsupported_attributes_are_named(tmp_path: Path) -> None:
    grouped = _model([helper.make_node("Conv", ["x", "w"], ["y"], group=2, name="dw")],
                     {"w": _rand(4, 1, 3, 3)}, ["N", 2, 8, 8], ["N", 4, 6, 6])
    with pytest.raises(UnsupportedOpError, match="Conv node 'dw': group=2"):
        export_tflite(grouped, tmp_path / "x.tflite")
    pooled = _model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1, 0, 0],
                                      name="mp")], {}, ["N", 1, 8, 8], ["N", 1, 8, 8])
    with pytest.raises(UnsupportedOpError, match="MaxPool node 'mp'"):
        export_tflite(pooled, tmp_path / "x.tflite")


def test_bad_weights_are_refused() -> None:
    spec = zoo.build("mlp")
    good = zoo.get_weights(spec.model)
    with pytest.raises(ValueError, match=r"'fc9\.weight' is not a parameter"):
        build_graph(spec.model, weights={"fc9.weight": good["fc1.weight"]})
    with pytest.raises(ValueError, match=r"'fc1.weight' has shape \(64, 128\)"):
        build_graph(spec.model, weights={"fc1.weight": good["fc1.weight"].T.copy()})
    with pytest.raises(TypeError, match=r"'fc1\.bias' must be float32, got float64"):
        build_graph(spec.model, weights={"fc1.bias": good["fc1.bias"].astype(np.float64)})
    bad = good["fc1.bias"].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match=r"'fc1\.bias' contains NaN"):
        build_graph(spec.model, weights={"fc1.bias": bad})


def test_bad_mode_and_calibration_are_refused(tmp_path: Path) -> None:
    spec = zoo.build("lenet-s")
    x = np.zeros((10, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="mode must be one of float, int8"):
        build_graph(spec.model, mode="int4")
    with pytest.raises(ValueError, match="needs calibration"):
        build_graph(spec.model, mode="int8")
    with pytest.raises(ValueError, match="only used by mode='int8'"):
        build_graph(spec.model, calibration=x)
    with pytest.raises(ValueError, match=r"shape \(10, 64\), the model input is \(N, 1, 8, 8\)"):
        build_graph(spec.model, mode="int8", calibration=x.reshape(10, 64))
    with pytest.raises(TypeError, match="must be a float32 array, got float64"):
        build_graph(spec.model, mode="int8", calibration=x.astype(np.float64))
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        export_tflite(tmp_path / "missing.onnx", tmp_path / "x.tflite")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        export_tflite(tmp_path / "junk.onnx", tmp_path / "x.tflite")


# --- tflite-runtime, in the second environment ------------------------------------------------

# orbitfl's own orbitfl.agent package (inference + file check), imported without the rest of
# orbitfl (whose compiled parts belong to the numpy-2 environment).
_SCRIPT = r"""
import json, sys, types
import numpy as np
for name, path in (("orbitfl", []), ("orbitfl.agent", [sys.argv[1]])):
    module = types.ModuleType(name)
    module.__path__ = path
    sys.modules[name] = module
from orbitfl.agent import inference
cases = json.loads(sys.argv[2])
report = {"numpy": np.__version__, "available": inference.available_runtimes(), "runtimes": []}
for files in cases.values():
    m = inference.OnboardModel(files["model"], runtime="tflite-runtime")
    np.save(files["out"], m.predict(np.load(files["x"])))
    report["runtimes"].append(m.runtime)
# a damaged file (valid header, random body) made tflite-runtime crash with SIGSEGV unchecked
try:
    inference.OnboardModel(sys.argv[3], runtime="tflite-runtime")
    report["damaged"] = "loaded"
except inference.InvalidModelError as exc:
    report["damaged"] = str(exc)
print(json.dumps(report))
"""


def _output_step(path: Path) -> float:
    """The quantization step of the int8 tensor feeding the final DEQUANTIZE."""
    import tflite

    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    sg = m.Subgraphs(0)
    last = sg.Operators(sg.OperatorsLength() - 1)
    return float(sg.Tensors(last.Inputs(0)).Quantization().Scale(0))


def test_tflite_runtime_in_numpy1_environment_matches(
    tmp_path: Path, trained: dict[str, Any], digits: dict[str, np.ndarray]
) -> None:
    """orbitfl's own agent/inference.py, loaded in the numpy<2 environment, runs the same files."""
    if not TFLITE_PYTHON.exists():
        pytest.skip(f"no tflite-runtime environment at {TFLITE_PYTHON} (tools/dev.py test creates it)")
    from orbitfl.agent import inference

    cases: dict[str, dict[str, str]] = {}
    expected: dict[str, np.ndarray] = {}
    models = {name: (spec, w) for name, (spec, w) in trained.items()}
    models["spectral-cnn"] = (zoo.build("spectral-cnn"), {})
    for name, (spec, weights) in models.items():
        if name == "spectral-cnn":
            x = np.random.default_rng(6).random((64, *spec.input_shape), dtype=np.float32)
            calib = np.random.default_rng(7).random((200, *spec.input_shape), dtype=np.float32)
        else:
            x = digits["x_test"].reshape(-1, *spec.input_shape)
            calib = digits["x_train"][:300].reshape(-1, *spec.input_shape)
        for mode in ("float", "int8"):
            key = f"{name}-{mode}"
            path = export_tflite(spec.model, tmp_path / f"{key}.tflite", weights=weights or None, mode=mode,
                                 calibration=calib if mode == "int8" else None)
            np.save(tmp_path / f"{key}.x.npy", x)
            cases[key] = {"model": str(path), "x": str(tmp_path / f"{key}.x.npy"),
                          "out": str(tmp_path / f"{key}.out.npy")}
            expected[key] = (ort_run(zoo.with_weights(spec.model, weights) if weights else spec.model, x)
                             if mode == "float" else litert(path, x))
    raw = Path(cases["lenet-s-int8"]["model"]).read_bytes()
    damaged = tmp_path / "damaged.tflite"
    noise = np.random.default_rng(8).integers(0, 256, len(raw) - 8, dtype=np.uint8)
    damaged.write_bytes(raw[:8] + noise.tobytes())
    agent_dir = str(Path(inference.__file__).parent)
    proc = subprocess.run(
        [str(TFLITE_PYTHON), "-c", _SCRIPT, agent_dir, json.dumps(cases), str(damaged)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["numpy"].startswith("1.") and report["available"] == ["tflite-runtime"]
    assert set(report["runtimes"]) == {"tflite-runtime"}
    assert "damaged.tflite is not a valid TFLite model" in report["damaged"]
    for key, want in expected.items():
        got = np.load(cases[key]["out"])
        assert got.shape == want.shape
        if key.endswith("float"):  # against ONNX Runtime
            np.testing.assert_allclose(got, want, rtol=FLOAT_TOL, atol=FLOAT_TOL, err_msg=key)
        else:  # against LiteRT on the same int8 file: the two runtimes' integer kernels round
            # differently now and then (measured: at most one output step on these models)
            steps = np.abs(got - want).max() / _output_step(Path(cases[key]["model"]))
            assert steps <= 2.01, (key, steps)
    for name in trained:  # int8 in tflite-runtime within one point of float in ONNX Runtime
        acc_float = (expected[f"{name}-float"].argmax(1) == digits["y_test"]).mean()
        acc_int8 = (np.load(cases[f"{name}-int8"]["out"]).argmax(1) == digits["y_test"]).mean()
        assert abs(acc_float - acc_int8) <= 0.01, (name, acc_float, acc_int8)
