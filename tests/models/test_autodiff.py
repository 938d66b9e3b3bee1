"""Training graphs of standard ONNX ops (orbitfl.models.autodiff): gradient checks and the contract.

Every gradient is checked twice: the float64 twin of the generated graph (same nodes, DOUBLE
tensors) is run with onnx's reference evaluator (ORT has no float64 Conv/ConvTranspose/AveragePool
kernel) and its gradients are compared with central finite differences of its own loss; the float32
graph is run with stock ``onnxruntime.InferenceSession`` and compared with the float64 gradients.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from orbitfl.cli import main
from orbitfl.models import artifacts, autodiff, zoo
from orbitfl.models.manifest import read_manifest

FD_EPS = 1e-6
FD_TOL = 1e-6  # relative, float64 analytic vs central differences
F32_TOL = 2e-4  # float32 ORT grads vs float64 grads, relative to the largest gradient entry


def make_feeds(
    model: onnx.ModelProto, loss: str, n: int, seed: int, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    graph = model.graph
    shape = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim][1:]
    k = graph.output[1].type.tensor_type.shape.dim[1].dim_value
    feeds: dict[str, np.ndarray] = {"input": rng.standard_normal((n, *shape)).astype(dtype)}
    feeds["target"] = (
        rng.integers(0, k, n).astype(np.int64) if loss == "ce" else rng.standard_normal((n, k)).astype(dtype)
    )
    return feeds


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def check_gradients(
    model: onnx.ModelProto,
    loss: str,
    trainable: list[str] | None = None,
    *,
    n: int = 3,
    seed: int = 0,
    coords: int = 3,
) -> float:
    """Largest relative error of the generated gradients (both checks); asserts the tolerances."""
    weights = zoo.get_weights(model)
    g32 = autodiff.build_training_graphs(model, trainable=trainable, loss=loss)
    g64 = autodiff.build_training_graphs(model, trainable=trainable, loss=loss, elem_type=TensorProto.DOUBLE)
    feeds32 = {**make_feeds(g32.train, loss, n, seed), **weights}
    feeds64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds32.items()}
    ref = ReferenceEvaluator(g64.train)
    out_names = [o.name for o in g64.train.graph.output]
    res64 = dict(zip(out_names, ref.run(None, feeds64), strict=True))
    ev = ReferenceEvaluator(g64.eval)

    def loss_at(name: str, value: np.ndarray) -> float:
        (value_out,) = ev.run(["loss"], {**feeds64, name: value})
        return float(value_out)

    rng = np.random.default_rng(seed + 1)
    worst = 0.0
    for p in g64.trainable:
        w = feeds64[p]
        g = res64[f"grad.{p}"]
        assert g.shape == w.shape and g.dtype == np.float64
        probes = [rng.standard_normal(w.shape) for _ in range(2)]
        for _ in range(min(coords, w.size)):
            e = np.zeros(w.shape)
            e.flat[int(rng.integers(w.size))] = 1.0
            probes.append(e)
        for v in probes:
            fd = (loss_at(p, w + FD_EPS * v) - loss_at(p, w - FD_EPS * v)) / (2 * FD_EPS)
            an = float((g * v).sum())
            # relative, with a floor for tiny directional derivatives (round-off ~1e-10 absolute)
            err = abs(fd - an) / (max(abs(fd), abs(an)) + 1e-3)
            worst = max(worst, err)
            assert err < FD_TOL, f"{p}: finite difference {fd!r}, graph {an!r}"
    res32 = run_ort(g32.train, feeds32)
    assert abs(float(res32["loss"]) - float(res64["loss"])) <= 1e-5 * max(1.0, abs(float(res64["loss"])))
    for p in g32.trainable:
        g, g_ref = res32[f"grad.{p}"], res64[f"grad.{p}"]
        assert g.dtype == np.float32 and g.shape == g_ref.shape
        err = float(np.abs(g - g_ref).max()) / max(float(np.abs(g_ref).max()), 1e-6)
        assert err < F32_TOL, f"{p}: float32 gradient off by {err:.2e} (relative)"
    return worst


# --- the zoo ------------------------------------------------------------------------------------

ZOO = [
    ("mlp", {}, "ce"),
    ("mlp", {"input": "8x8", "hidden": [16, 12]}, "mse"),
    ("lenet-s", {"input": "8x8"}, "ce"),
    ("lenet-s", {"input": "8x8"}, "mse"),
    ("lenet-s", {"input": "28x28"}, "ce"),
    ("spectral-cnn", {}, "mse"),
    ("spectral-cnn", {"classes": 5}, "ce"),
    ("moe", {}, "ce"),
    ("moe", {"experts": 3}, "mse"),
]


@pytest.mark.parametrize(("name", "options", "loss"), ZOO)
def test_zoo_gradients_match_finite_differences(name: str, options: dict[str, Any], loss: str) -> None:
    spec = zoo.build(name, **options)
    worst = check_gradients(spec.model, loss, coords=2)
    print(f"{name} {options} {loss}: max relative gradient error {worst:.2e}")


def test_moe_trainable_subset_of_experts() -> None:
    spec = zoo.build("moe", experts=4, hidden=8)
    chosen = zoo.expert_parameters(spec, [1, 3])
    check_gradients(spec.model, "ce", chosen)
    graphs = autodiff.build_training_graphs(spec.model, trainable=chosen)
    grads = [o.name for o in graphs.train.graph.output][2:]
    assert grads == [f"grad.{p}" for p in chosen]
    # frozen experts cost no backward work: only their forward Gemms read their weights
    frozen = set(spec.parameter_names) - set(chosen)
    readers = [n for n in graphs.train.graph.node if frozen & set(n.input)]
    assert [n.op_type for n in readers] == ["Gemm"] * (len(frozen) // 2)
    assert all(n.name in {x.name for x in spec.model.graph.node} for n in readers)


def test_frozen_parameters_get_no_gradient_output() -> None:
    spec = zoo.build("lenet-s")
    chosen = ["fc3.weight", "fc3.bias", "conv2.weight"]
    graphs = autodiff.build_training_graphs(spec.model, trainable=chosen)
    train = graphs.train.graph
    assert [o.name for o in train.output] == [
        "loss",
        "output",
        "grad.conv2.weight",
        "grad.fc3.weight",
        "grad.fc3.bias",
    ]
    # every parameter is an input, in manifest order, after input and target
    assert [i.name for i in train.input] == ["input", "target", *spec.parameter_names]
    # conv1 is frozen, so nothing needs the gradient of conv2's input: no ConvTranspose at all
    assert not [n for n in train.node if n.op_type == "ConvTranspose"]
    check_gradients(spec.model, "ce", chosen)


# --- the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", zoo.MODEL_NAMES)
def test_train_step_uses_only_standard_ops_and_the_contract_names(name: str) -> None:
    spec = zoo.build(name)
    graphs = autodiff.build_training_graphs(spec.model, loss=spec.default_loss)
    for model, grads in ((graphs.train, True), (graphs.eval, False)):
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)] and model.ir_version == 8
        assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
        assert not [n for n in model.graph.node if n.op_type == "Identity"]
        onnx.checker.check_model(model, full_check=True)
        inputs = model.graph.input
        assert [i.name for i in inputs] == ["input", "target", *spec.parameter_names]
        batch = inputs[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param == "N"
        assert inputs[1].type.tensor_type.elem_type == (
            TensorProto.INT64 if spec.default_loss == "ce" else TensorProto.FLOAT
        )
        outs = [o.name for o in model.graph.output]
        assert outs == ["loss", "output", *([f"grad.{p}" for p in spec.parameter_names] if grads else [])]
        assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT for o in model.graph.output)
        assert not [t for t in model.graph.initializer if t.name in spec.parameter_names]


def test_ce_and_mse_losses_are_the_contracts() -> None:
    spec = zoo.build("mlp", hidden=[8])
    w = zoo.get_weights(spec.model)
    for loss in ("ce", "mse"):
        graphs = autodiff.build_training_graphs(spec.model, loss=loss)
        feeds = {**make_feeds(graphs.eval, loss, 5, 3), **w}
        res = run_ort(graphs.eval, feeds)
        logits = res["output"].astype(np.float64)
        if loss == "ce":
            z = logits - logits.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            expected = -logp[np.arange(5), feeds["target"]].mean()
        else:
            expected = ((logits - feeds["target"]) ** 2).mean()
        assert res["loss"].shape == () and abs(float(res["loss"]) - expected) < 1e-5
        assert [o.name for o in graphs.eval.graph.output] == ["loss", "output"]


def test_unsupported_op_is_refused_naming_op_and_node() -> None:
    spec = zoo.build("mlp", hidden=[8])
    model = onnx.ModelProto()
    model.CopyFrom(spec.model)
    node = model.graph.node[1]  # the Relu
    node.op_type, node.name = "Erf", "my_erf"
    with pytest.raises(ValueError, match=r"unsupported op Erf in node 'my_erf'.*supports: Add, AveragePool"):
        autodiff.build_training_graphs(model)


def test_unknown_trainable_and_bad_output_are_refused() -> None:
    spec = zoo.build("mlp", hidden=[8])
    with pytest.raises(ValueError, match=r"not parameters.*fc1.weight"):
        autodiff.build_training_graphs(spec.model, trainable=["fc9.weight"])
    with pytest.raises(ValueError, match=r"unknown loss 'l1'"):
        autodiff.build_training_graphs(spec.model, loss="l1")


# --- every op on small random graphs --------------------------------------------------------------


class G:
    """A tiny forward graph: ``pre = input * scale`` so every op's input needs a gradient."""

    def __init__(self, in_shape: tuple[int, ...], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.in_shape = in_shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = 0
        self.pre = self.op("Mul", ["input", self.param("scale", in_shape, low=0.5)])

    def param(self, name: str, shape: tuple[int, ...], low: float | None = None) -> str:
        arr = self.rng.standard_normal(shape) if low is None else self.rng.uniform(low, low + 1.0, shape)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name))
        return name

    def ints(self, values: list[int]) -> str:
        name = f"c{len(self.nodes)}"
        t = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}.const", value=t))
        return name

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: Any) -> str:
        self.k += 1
        outs = [f"t{self.k}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.k}", **attrs))
        return outs[0]

    def _model(self, nodes: list[onnx.NodeProto], y: onnx.ValueInfoProto) -> onnx.ModelProto:
        graph = helper.make_graph(
            nodes,
            "t",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *self.in_shape])],
            [y],
            initializer=self.inits,
        )
        for n in graph.node:
            n.input[:] = ["x" if t == "input" else t for t in n.input]
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model

    def finish(self, x: str, out_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
        """Flatten ``x`` (per-sample shape ``out_shape``, or onnx's inferred one) into output y."""
        if out_shape is None:
            probe = onnx.shape_inference.infer_shapes(self._model(self.nodes, onnx.ValueInfoProto(name=x)))
            dims = probe.graph.output[0].type.tensor_type.shape.dim
            out_shape = tuple(int(d.dim_value) for d in dims[1:])
        if len(out_shape) != 1:
            x = self.op("Flatten", [x], axis=1)
            out_shape = (int(np.prod(out_shape)),)
        self.nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
        model = self._model(
            self.nodes, helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_shape])
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _gemm(**attrs: Any) -> onnx.ModelProto:
    g = G((4,))
    a = g.pre
    if attrs.get("transA"):
        a = g.op("Transpose", [a], perm=[1, 0])
    b_shape = (5, 4) if attrs.get("transB") else (4, 5)
    c_shape = attrs.pop("c_shape", (5,))
    inputs = [a, g.param("w", b_shape)] + ([g.param("b", c_shape)] if c_shape is not None else [])
    return g.finish(g.op("Gemm", inputs, **attrs), (5,))


def _binary(op: str, shape: tuple[int, ...], other: tuple[int, ...], swap: bool = False) -> onnx.ModelProto:
    g = G(shape)
    p = g.param("p", other, low=1.5 if op == "Div" else None)
    ins = [p, g.pre] if swap else [g.pre, p]
    out = np.broadcast_shapes(shape, other)
    return g.finish(g.op(op, ins), tuple(int(d) for d in out))


def _div_by_data() -> onnx.ModelProto:
    """p / (pre * pre + c): the data is in the denominator, kept away from zero."""
    g = G((3, 4))
    den = g.op("Add", [g.op("Mul", [g.pre, g.pre]), g.param("c", (4,), low=1.5)])
    return g.finish(g.op("Div", [g.param("p", (3, 1)), den]), (3, 4))


def _unary(op: str, **attrs: Any) -> onnx.ModelProto:
    g = G((3, 4))
    return g.finish(g.op(op, [g.pre], **attrs), (3, 4))


def _matmul(b_shape: tuple[int, ...], a_shape: tuple[int, ...] = (2, 3)) -> onnx.ModelProto:
    g = G(a_shape)
    y = g.op("MatMul", [g.pre, g.param("w", b_shape)])
    out = np.matmul(np.zeros((1, *a_shape)), np.zeros(b_shape)).shape[1:]
    if not out:
        y = g.op("Reshape", [y, g.ints([-1, 1])])
        out = (1,)
    return g.finish(y, tuple(out))


def _conv(
    c_in: int, hw: tuple[int, int], k: tuple[int, int], strides: list[int], pads: list[int], **extra: Any
) -> onnx.ModelProto:
    g = G((c_in, *hw))
    ins = [g.pre, g.param("w", (3, c_in, *k))]
    if extra.pop("bias", True):
        ins.append(g.param("b", (3,)))
    if pads:
        extra["pads"] = pads
    return g.finish(g.op("Conv", ins, strides=strides, **extra))


def _pool(op: str, hw: tuple[int, int], **attrs: Any) -> onnx.ModelProto:
    g = G((2, *hw))
    return g.finish(g.op(op, [g.pre], **attrs))


def _slice(starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> onnx.ModelProto:
    g = G((5, 6))
    return g.finish(g.op("Slice", [g.pre, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)]))


def _misc(kind: str) -> onnx.ModelProto:
    g = G((2, 3, 4))
    if kind == "flatten":
        y = g.op("Flatten", [g.pre], axis=-3)
        return g.finish(g.op("Tanh", [y]), (24,))
    if kind == "reshape":
        y = g.op("Reshape", [g.pre, g.ints([0, 4, -1])])
        return g.finish(g.op("Sigmoid", [y]), (4, 6))
    if kind == "concat":
        q = g.param("q", (2, 1, 4))
        qb = g.op("Mul", [q, g.op("Slice", [g.pre, g.ints([0]), g.ints([1]), g.ints([2])])])
        return g.finish(g.op("Concat", [g.pre, qb, g.pre], axis=2))
    if kind == "transpose":
        y = g.op("Transpose", [g.pre], perm=[0, 3, 1, 2])
        y = g.op("Softmax", [y], axis=1)
        return g.finish(y, (4, 2, 3))
    if kind == "constant":
        c = f"c{len(g.nodes)}"
        t = numpy_helper.from_array(g.rng.standard_normal((3, 4)).astype(np.float32), c)
        g.nodes.append(helper.make_node("Constant", [], [c], name="const_f", value=t))
        y = g.op("Add", [g.op("Identity", [g.pre]), c])
        y = g.op("Mul", [y, g.op("Identity", [y])])  # one tensor used twice: gradients are summed
        return g.finish(y, (2, 3, 4))
    raise AssertionError(kind)


OPS: dict[str, Any] = {
    "gemm": lambda: _gemm(transB=1),
    "gemm-alpha-beta": lambda: _gemm(transB=0, alpha=0.7, beta=1.3, c_shape=(1, 5)),
    "gemm-transA": lambda: _gemm(transA=1, transB=1, alpha=-0.6, c_shape=()),
    "gemm-nobias": lambda: _gemm(transA=1, alpha=1.7, c_shape=None),
    "matmul-2d": lambda: _matmul((4, 5), (4,)),
    "matmul-3d": lambda: _matmul((3, 5)),
    "matmul-broadcast": lambda: _matmul((4, 3, 5), (1, 2, 3)),
    "matmul-vector": lambda: _matmul((3,), (3,)),
    "add-bias": lambda: _binary("Add", (3, 4), (4,)),
    "add-column": lambda: _binary("Add", (3, 4), (3, 1), swap=True),
    "sub-left": lambda: _binary("Sub", (3, 4), (1, 3, 1), swap=True),
    "sub-scalar": lambda: _binary("Sub", (3, 4), ()),
    "mul-broadcast": lambda: _binary("Mul", (2, 1, 4), (3, 1)),
    "div-denominator": lambda: _div_by_data(),
    "div-numerator": lambda: _binary("Div", (3, 4), (4,)),
    "relu": lambda: _unary("Relu"),
    "sigmoid": lambda: _unary("Sigmoid"),
    "tanh": lambda: _unary("Tanh"),
    "softmax-last": lambda: _unary("Softmax", axis=-1),
    "softmax-axis1": lambda: _unary("Softmax", axis=1),
    "conv-stride2-pads": lambda: _conv(2, (7, 6), (3, 3), [2, 2], [1, 0, 2, 1]),
    "conv-stride3-remainder": lambda: _conv(2, (8, 9), (2, 3), [3, 2], [0, 1, 0, 0]),
    "conv-same": lambda: _conv(1, (5, 5), (3, 3), [1, 1], [], auto_pad="SAME_UPPER"),
    "conv-nobias-1x5": lambda: _conv(2, (1, 9), (1, 5), [1, 2], [0, 2, 0, 2], bias=False),
    "maxpool-2x2": lambda: _pool("MaxPool", (6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    "maxpool-overlap-pads": lambda: _pool(
        "MaxPool", (7, 6), kernel_shape=[3, 3], strides=[2, 1], pads=[1, 1, 1, 0]
    ),
    "maxpool-ceil": lambda: _pool("MaxPool", (7, 7), kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
    "avgpool-include-pad": lambda: _pool(
        "AveragePool", (7, 6), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1
    ),
    "avgpool-exclude-pad": lambda: _pool(
        "AveragePool", (7, 6), kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], count_include_pad=0
    ),
    "avgpool-plain": lambda: _pool("AveragePool", (6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    "slice-step1": lambda: _slice([1, 2], [4, 5], [1, 2], [1, 1]),
    "slice-step2": lambda: _slice([0], [6], [-1], [2]),
    "slice-negative-step": lambda: _slice([-1, 4], [-10, 0], [1, 2], [-2, -1]),
    "flatten": lambda: _misc("flatten"),
    "reshape": lambda: _misc("reshape"),
    "concat": lambda: _misc("concat"),
    "transpose-softmax": lambda: _misc("transpose"),
    "constant-identity-reuse": lambda: _misc("constant"),
}


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("case", list(OPS))
def test_op_gradients_match_finite_differences(case: str, loss: str) -> None:
    check_gradients(OPS[case](), loss, n=3, seed=len(case))


def test_maxpool_ties_send_the_gradient_to_one_position() -> None:
    g = G((1, 4, 4))
    y = g.op("MaxPool", [g.pre], kernel_shape=[2, 2], strides=[2, 2])
    model = g.finish(y, (1, 2, 2))
    # scale = 1 and a constant input: every window is a four-way tie
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((1, 4, 4), np.float32), "scale"))
    graphs = autodiff.build_training_graphs(model, loss="mse")
    x = np.full((2, 1, 4, 4), 0.5, dtype=np.float32)
    feeds = {"input": x, "target": np.zeros((2, 4), np.float32), "scale": np.ones((1, 4, 4), np.float32)}
    grad = run_ort(graphs.train, feeds)["grad.scale"][0]
    # d loss/d output = 2 * 0.5 / 8 per element; each window sends it (times x = 0.5, summed over 2
    # samples) to its first position only, as PyTorch and ORT training do
    expected = np.zeros((4, 4), np.float32)
    expected[::2, ::2] = 2 * (2 * 0.5 / 8) * 0.5
    np.testing.assert_allclose(grad, expected, rtol=1e-6)


def test_relu_gradient_at_zero_is_zero() -> None:
    graphs = autodiff.build_training_graphs(_unary("Relu"), loss="mse")
    feeds = {
        "input": np.zeros((2, 3, 4), np.float32),
        "target": np.ones((2, 12), np.float32),
        "scale": np.ones((3, 4), np.float32),
    }
    assert not np.any(run_ort(graphs.train, feeds)["grad.scale"])


def test_user_model_with_other_names_and_an_older_opset(tmp_path: Path) -> None:
    spec = zoo.build("mlp", hidden=[8])
    model = onnx.ModelProto()
    model.CopyFrom(spec.model)
    for n in model.graph.node:  # rename the data input and the output, as an exporter would
        n.input[:] = ["data" if t == "input" else t for t in n.input]
        n.output[:] = ["logits" if t == "output" else t for t in n.output]
    model.graph.input[0].name, model.graph.output[0].name = "data", "logits"
    model.opset_import[0].version = 13
    onnx.checker.check_model(model)
    check_gradients(model, "ce")


# --- artifacts and the CLI ------------------------------------------------------------------------


def test_build_artifacts_writes_the_contract(tmp_path: Path) -> None:
    spec = zoo.build("moe", experts=3, hidden=8)
    m = artifacts.build_artifacts(spec, tmp_path, trainable=["expert.1"], optimizer="sgd")
    assert m.backend == "onnxruntime" and m.trainable == spec.groups["expert.1"]
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["backend"] == "onnxruntime"
    assert sorted(data["files"].values()) == sorted(
        ["inference.onnx", "train_step.onnx", "eval_step.onnx", "params.npz"]
    )
    assert read_manifest(tmp_path) == m
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*data["files"].values(), "manifest.json"])
    with np.load(tmp_path / "params.npz", allow_pickle=False) as params:
        assert list(params.keys()) == list(m.parameters)
        for name, arr in zoo.get_weights(spec.model).items():
            assert params[name].dtype == np.float32 and np.array_equal(params[name], arr)
    train = onnx.load(str(tmp_path / "train_step.onnx"))
    assert [o.name for o in train.graph.output] == ["loss", "output", *[f"grad.{p}" for p in m.trainable]]


def test_old_manifest_without_backend_means_ort_training(tmp_path: Path) -> None:
    m = artifacts.build_artifacts(zoo.build("mlp", hidden=[8]), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["backend"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    old = read_manifest(tmp_path)
    assert old.backend == "onnxruntime-training" and "checkpoint" in old.files
    assert old.parameters == m.parameters


def test_cli_build_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lenet"
    assert main(["model", "build", "lenet-s", "--out", str(out), "--trainable", "fc3"]) == 0
    assert "backend onnxruntime" in capsys.readouterr().out
    assert read_manifest(out).backend == "onnxruntime"
    legacy = importlib.util.find_spec("onnxruntime.training") is not None and onnx.__version__ <= "1.17"
    if not legacy:
        assert (
            main(["model", "build", "mlp", "--out", str(tmp_path / "x"), "--backend", "onnxruntime-training"])
            == 2
        )
        err = capsys.readouterr().err
        # ort_import's wording (branch trainer): "needs onnxruntime-training 1.19.2 and onnx 1.17".
        assert "onnxruntime-training" in err and re.search(r"onnx (<= )?1\.17", err), err
        assert not (tmp_path / "x" / "manifest.json").exists()


# --- against ORT training, where it is installed --------------------------------------------------


def test_gradients_match_onnxruntime_training(tmp_path: Path) -> None:
    try:
        from orbitfl.ort_import import training_api

        api = training_api()
    except ImportError as exc:
        pytest.skip(f"onnxruntime-training is not installed here ({exc}); nothing to compare with")
    if tuple(int(v) for v in onnx.__version__.split(".")[:2]) > (1, 17):
        pytest.skip(f"onnxruntime-training's artifact generator needs onnx <= 1.17, not {onnx.__version__}")
    spec = zoo.build("lenet-s")
    artifacts.build_artifacts(spec, tmp_path / "ort", backend="onnxruntime-training")
    state = api.CheckpointState.load_checkpoint(str(tmp_path / "ort" / "checkpoint"))
    module = api.Module(str(tmp_path / "ort" / "training_model.onnx"), state, None, "cpu")
    graphs = autodiff.build_training_graphs(spec.model)
    feeds = make_feeds(graphs.train, "ce", 4, 0)
    module.train()
    module(feeds["input"], feeds["target"].astype(np.int64))
    ours = run_ort(graphs.train, {**feeds, **zoo.get_weights(spec.model)})
    for p in spec.parameter_names:
        theirs = state.parameters[p].grad
        np.testing.assert_allclose(ours[f"grad.{p}"], theirs, rtol=1e-4, atol=1e-6)
