"""The model zoo: small ONNX inference graphs built with ``onnx.helper`` (no PyTorch anywhere).

Every model has one float32 input named ``input`` with a symbolic batch dimension and one output
named ``output`` (logits for classifiers, values for regressors). Parameters are graph initializers
with stable names in PyTorch's convention (``fc1.weight`` is ``[out, in]`` and used by ``Gemm`` with
``transB=1``; ``conv1.weight`` is ``[out_c, in_c, kh, kw]``), so a weight dictionary means the same
thing to the trainer, the codecs, the ground and the TFLite exporter.

The inference graphs of ``mlp``, ``lenet-s`` and ``spectral-cnn`` use only Gemm, Relu, Conv, MaxPool
and Flatten, which the TFLite exporter maps one to one. ``moe`` also uses Softmax, Slice, Mul, Add
and Constant.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from orbitfl.models.manifest import check_weights, is_model_path

# Opset 17 and IR 8: what onnxruntime-training 1.19 builds gradients for and what older and newer
# runtimes (stock ONNX Runtime on ARM boards) all load.
OPSET = 17
IR_VERSION = 8
INPUT = "input"
OUTPUT = "output"

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class ModelSpec:
    """An inference graph plus what the trainer and the loaders need to know about it."""

    name: str
    model: onnx.ModelProto
    input_shape: tuple[int, ...]  # per sample, without the batch dimension
    task: Task
    num_outputs: int
    # Named groups of parameters, e.g. {"expert.0": [...], "router": [...]} for the moe.
    groups: dict[str, list[str]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def parameter_names(self) -> list[str]:
        return parameter_names(self.model)

    @property
    def default_loss(self) -> Literal["ce", "mse"]:
        return "ce" if self.task == "classification" else "mse"


class _Builder:
    """Collects nodes and initializers; initial weights follow PyTorch's default (Kaiming-uniform)
    bounds so the zoo trains like the familiar reference models."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def tmp(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def param(self, name: str, shape: Sequence[int], fan_in: int) -> str:
        bound = 1.0 / math.sqrt(fan_in)
        arr = self.rng.uniform(-bound, bound, size=tuple(shape)).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def const_i64(self, name: str, values: Sequence[int]) -> str:
        # A Constant node, not an initializer: initializers are the parameters (and the checkpoint).
        value = numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}.const", value=value))
        return name

    def gemm(self, x: str, prefix: str, n_in: int, n_out: int, out: str | None = None) -> str:
        w = self.param(f"{prefix}.weight", (n_out, n_in), n_in)
        b = self.param(f"{prefix}.bias", (n_out,), n_in)
        y = out or self.tmp(prefix)
        self.nodes.append(helper.make_node("Gemm", [x, w, b], [y], name=prefix, transB=1))
        return y

    def conv(
        self, x: str, prefix: str, c_in: int, c_out: int, kernel: tuple[int, int], pads: tuple[int, int]
    ) -> str:
        fan_in = c_in * kernel[0] * kernel[1]
        w = self.param(f"{prefix}.weight", (c_out, c_in, *kernel), fan_in)
        b = self.param(f"{prefix}.bias", (c_out,), fan_in)
        y = self.tmp(prefix)
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, w, b],
                [y],
                name=prefix,
                kernel_shape=list(kernel),
                pads=[pads[0], pads[1], pads[0], pads[1]],
                strides=[1, 1],
            )
        )
        return y

    def op(self, op_type: str, inputs: Sequence[str], hint: str, out: str | None = None, **attrs: Any) -> str:
        y = out or self.tmp(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [y], name=self.tmp(op_type), **attrs))
        return y

    def finish(self, name: str, input_shape: Sequence[int], output_dim: int) -> onnx.ModelProto:
        inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", *input_shape])
        out = helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", output_dim])
        graph = helper.make_graph(self.nodes, name, [inp], [out], initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="orbitfl.models.zoo"
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model, full_check=True)
        return model


def _parse_input(value: str | Sequence[int] | int | None, default: tuple[int, ...]) -> tuple[int, ...]:
    """``"8x8"`` -> (8, 8); ``"64"`` or 64 -> (64,); a sequence is taken as is."""
    if value is None:
        return default
    if isinstance(value, int):
        dims: tuple[int, ...] = (value,)
    elif isinstance(value, str):
        if not re.fullmatch(r"\d+(x\d+)*", value.strip()):
            raise ValueError(f"input size {value!r} is not of the form N or HxW (e.g. 64, 8x8, 28x28)")
        dims = tuple(int(v) for v in value.strip().split("x"))
    else:
        dims = tuple(int(v) for v in value)
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"input size {value!r} must have positive dimensions")
    return dims


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def build_mlp(
    *,
    input: str | Sequence[int] | int | None = None,
    hidden: Sequence[int] = (128,),
    classes: int = 10,
    seed: int = 0,
) -> ModelSpec:
    """Fully connected net, default 64-128-10 (digits). Layers are ``fc1``, ``fc2``, ..."""
    dims = _parse_input(input, (64,))
    n_in = int(np.prod(dims))
    widths = [_positive("hidden width", h) for h in hidden]
    classes = _positive("classes", classes)
    b = _Builder(seed)
    x = INPUT
    if len(dims) > 1:  # an image given as HxW is flattened inside the graph
        x = b.op("Flatten", [x], "flat", axis=1)
    sizes = [n_in, *widths, classes]
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        x = b.gemm(x, f"fc{i + 1}", sizes[i], sizes[i + 1], out=OUTPUT if last else None)
        if not last:
            x = b.op("Relu", [x], "relu")
    model = b.finish("mlp", dims, classes)
    return ModelSpec(
        "mlp",
        model,
        dims,
        "classification",
        classes,
        options={"input": "x".join(map(str, dims)), "hidden": widths, "classes": classes},
    )


def build_lenet_s(
    *,
    input: str | Sequence[int] | int | None = None,
    channels: Sequence[int] | None = None,
    fc: Sequence[int] = (120, 84),
    classes: int = 10,
    seed: int = 0,
) -> ModelSpec:
    """The small LeNet SpaceDML trains: two conv+ReLU+2x2-max-pool blocks, then three dense layers.

    28x28 input uses 5x5 kernels and 6/16 channels (classic LeNet-5 geometry, 16*5*5 features into
    ``fc1``). 8x8 input (digits) uses 3x3 'same' kernels so two poolings still leave a 2x2 map, and
    16/32 channels: with 6/16 the 64 features left after pooling cap digits test accuracy near 97 %,
    with 16/32 it reaches about 98 % in 20 epochs.
    """
    dims = _parse_input(input, (8, 8))
    if len(dims) == 1 and math.isqrt(dims[0]) ** 2 == dims[0]:
        dims = (math.isqrt(dims[0]),) * 2
    if len(dims) != 2 or dims[0] != dims[1] or dims[0] < 8:
        raise ValueError(
            f"lenet-s takes a square single-channel image of at least 8x8 (e.g. 8x8, 28x28), "
            f"got {'x'.join(map(str, dims))}"
        )
    side = dims[0]
    if channels is None:
        channels = (6, 16) if side >= 28 else (16, 32)
    c1, c2 = (_positive("channels", c) for c in channels)
    classes = _positive("classes", classes)
    if side >= 28:
        k, pad1, pad2 = 5, 2, 0
    else:
        k, pad1, pad2 = 3, 1, 1
    b = _Builder(seed)
    x = b.conv(INPUT, "conv1", 1, c1, (k, k), (pad1, pad1))
    x = b.op("Relu", [x], "relu")
    x = b.op("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    s = (side + 2 * pad1 - k + 1) // 2
    x = b.conv(x, "conv2", c1, c2, (k, k), (pad2, pad2))
    x = b.op("Relu", [x], "relu")
    x = b.op("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
    s = (s + 2 * pad2 - k + 1) // 2
    if s < 1:
        raise ValueError(f"lenet-s: input {side}x{side} is too small for its kernels")
    x = b.op("Flatten", [x], "flat", axis=1)
    sizes = [c2 * s * s, *(_positive("fc width", f) for f in fc), classes]
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        x = b.gemm(x, f"fc{i + 1}", sizes[i], sizes[i + 1], out=OUTPUT if last else None)
        if not last:
            x = b.op("Relu", [x], "relu")
    model = b.finish("lenet-s", (1, side, side), classes)
    return ModelSpec(
        "lenet-s",
        model,
        (1, side, side),
        "classification",
        classes,
        options={"input": f"{side}x{side}", "channels": [c1, c2], "classes": classes},
    )


def build_spectral_cnn(
    *,
    input: str | Sequence[int] | int | None = None,
    channels: Sequence[int] = (8, 16),
    kernel: int = 5,
    hidden: int = 32,
    outputs: int | None = None,
    classes: int | None = None,
    seed: int = 0,
) -> ModelSpec:
    """A 1-D convolutional net over one pixel's spectrum, written as 2-D Conv with a 1xK kernel so
    the TFLite exporter needs no separate Conv1D path. Input ``[batch, 1, 1, bands]``.

    Default task is background learning (regression: reconstruct the spectrum through a
    ``hidden``-wide bottleneck, MSE loss); a pixel the background model reconstructs badly is a
    target candidate. Give ``classes`` for a per-pixel classifier instead.
    """
    dims = _parse_input(input, (64,))
    bands = int(np.prod(dims))
    kernel = _positive("kernel", kernel)
    if kernel % 2 == 0:
        raise ValueError(f"spectral-cnn kernel must be odd ('same' padding keeps the length), got {kernel}")
    c1, c2 = (_positive("channels", c) for c in channels)
    if bands < 4:
        raise ValueError(f"spectral-cnn needs at least 4 bands, got {bands}")
    task: Task = "regression" if classes is None else "classification"
    n_out = _positive("classes", classes) if classes is not None else _positive("outputs", outputs or bands)
    b = _Builder(seed)
    x = b.conv(INPUT, "conv1", 1, c1, (1, kernel), (0, kernel // 2))
    x = b.op("Relu", [x], "relu")
    x = b.op("MaxPool", [x], "pool", kernel_shape=[1, 2], strides=[1, 2])
    x = b.conv(x, "conv2", c1, c2, (1, kernel), (0, kernel // 2))
    x = b.op("Relu", [x], "relu")
    x = b.op("MaxPool", [x], "pool", kernel_shape=[1, 2], strides=[1, 2])
    x = b.op("Flatten", [x], "flat", axis=1)
    feat = c2 * ((bands // 2) // 2)
    x = b.gemm(x, "fc1", feat, _positive("hidden", hidden))
    x = b.op("Relu", [x], "relu")
    b.gemm(x, "fc2", hidden, n_out, out=OUTPUT)
    model = b.finish("spectral-cnn", (1, 1, bands), n_out)
    return ModelSpec(
        "spectral-cnn",
        model,
        (1, 1, bands),
        task,
        n_out,
        options={
            "input": str(bands),
            "channels": [c1, c2],
            "kernel": kernel,
            "hidden": hidden,
            "outputs": n_out,
            "task": task,
        },
    )


def build_moe(
    *,
    input: str | Sequence[int] | int | None = None,
    experts: int = 4,
    hidden: int = 32,
    classes: int = 10,
    seed: int = 0,
) -> ModelSpec:
    """Mixture of experts for EMS-FL: a linear router with softmax gates and ``experts`` small MLPs
    (``expert.{i}.fc1``, ``expert.{i}.fc2``); output = sum_i gate_i * expert_i(x).

    Each expert's parameters are ``groups["expert.{i}"]``; the router's are ``groups["router"]``.
    """
    dims = _parse_input(input, (64,))
    n_in = int(np.prod(dims))
    n_exp = _positive("experts", experts)
    hidden = _positive("hidden", hidden)
    classes = _positive("classes", classes)
    b = _Builder(seed)
    x = INPUT
    if len(dims) > 1:
        x = b.op("Flatten", [x], "flat", axis=1)
    logits = b.gemm(x, "router", n_in, n_exp)
    gates = b.op("Softmax", [logits], "gates", axis=-1)
    axes = b.const_i64("moe.axes", [1])
    total: str | None = None
    groups: dict[str, list[str]] = {"router": ["router.weight", "router.bias"]}
    for i in range(n_exp):
        p = f"expert.{i}"
        h = b.op("Relu", [b.gemm(x, f"{p}.fc1", n_in, hidden)], "relu")
        y = b.gemm(h, f"{p}.fc2", hidden, classes)
        starts = b.const_i64(f"moe.start{i}", [i])
        ends = b.const_i64(f"moe.end{i}", [i + 1])
        g = b.op("Slice", [gates, starts, ends, axes], f"gate{i}")
        term = b.op("Mul", [g, y], f"weighted{i}", out=OUTPUT if n_exp == 1 else None)
        if total is not None:
            total = b.op("Add", [total, term], "sum", out=OUTPUT if i == n_exp - 1 else None)
        else:
            total = term
        groups[p] = [f"{p}.fc1.weight", f"{p}.fc1.bias", f"{p}.fc2.weight", f"{p}.fc2.bias"]
    model = b.finish("moe", dims, classes)
    return ModelSpec(
        "moe",
        model,
        dims,
        "classification",
        classes,
        groups=groups,
        options={"input": "x".join(map(str, dims)), "experts": n_exp, "hidden": hidden, "classes": classes},
    )


BUILDERS: dict[str, Callable[..., ModelSpec]] = {
    "mlp": build_mlp,
    "lenet-s": build_lenet_s,
    "spectral-cnn": build_spectral_cnn,
    "moe": build_moe,
}
MODEL_NAMES: tuple[str, ...] = tuple(BUILDERS)


def build(name: str, **options: Any) -> ModelSpec:
    """Build a zoo model by name; options are the builder's keyword arguments (None = default)."""
    builder = BUILDERS.get(name)
    if builder is None:
        raise ValueError(
            f"unknown model {name!r}; the zoo has: {', '.join(MODEL_NAMES)} "
            f"(or give the path of your own .onnx file)"
        )
    given = {k: v for k, v in options.items() if v is not None}
    try:
        return builder(**given)
    except TypeError as exc:  # an option this model does not take
        raise ValueError(f"model {name!r}: {exc}") from None


def resolve(name_or_path: str, *, seed: int = 0) -> ModelSpec:
    """A zoo model by name (initial weights seeded by ``seed``), or the user's own ``.onnx`` file
    (its own initial weights): what a daemon's ``model`` setting names."""
    if is_model_path(name_or_path):
        return load_user_model(name_or_path)
    return build(name_or_path, seed=seed)


# --- user models --------------------------------------------------------------------------------


def load_user_model(path: str | Path, *, task: Task | None = None) -> ModelSpec:
    """Wrap an ONNX model exported from any framework. Its parameters are its float32
    initializers (constant integer tensors such as shapes are not parameters). One graph input
    (besides initializers) and one output are required; the task defaults to classification."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"model file {str(p)!r} does not exist")
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises several unrelated types for a bad file
        raise ValueError(f"{p}: not a valid ONNX model ({exc})") from None
    init_names = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ValueError(
            f"{p}: orbitfl needs exactly one data input and one output, found inputs "
            f"{[i.name for i in inputs]} and outputs {[o.name for o in model.graph.output]}"
        )
    if not parameter_names(model):
        raise ValueError(f"{p}: the model has no float32 initializers, so nothing to train")
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in inputs[0].type.tensor_type.shape.dim]
    out_dims = [
        d.dim_value if d.HasField("dim_value") else -1
        for d in model.graph.output[0].type.tensor_type.shape.dim
    ]
    per_sample = tuple(shape[1:])
    if any(d <= 0 for d in per_sample):
        raise ValueError(
            f"{p}: input {inputs[0].name!r} must have fixed sizes after the batch dimension, got {shape}"
        )
    num_out = out_dims[-1] if out_dims and out_dims[-1] > 0 else 0
    return ModelSpec(p.stem, model, per_sample, task or "classification", num_out, options={"path": str(p)})


# --- identity -----------------------------------------------------------------------------------


def fingerprint(model: onnx.ModelProto | ModelSpec) -> str:
    """A short hash of what makes two models exchangeable: the parameters' names, shapes and
    dtypes, the graph's nodes (ops, wiring, attributes), constants and its input and output. Not
    the weights, so every version of one federation's model has the same fingerprint, while a
    different zoo model, options or ONNX file does not."""
    proto = model.model if isinstance(model, ModelSpec) else model
    g = proto.graph
    h = hashlib.sha256()

    def put(*parts: object) -> None:
        h.update(repr(parts).encode())
        h.update(b"\n")

    for t in g.initializer:
        if t.data_type == TensorProto.FLOAT:
            put("param", t.name, tuple(t.dims), t.data_type)
        else:  # shapes, axes, indices: structure, so their values count
            raw = numpy_helper.to_array(t).tobytes()
            put("const", t.name, tuple(t.dims), t.data_type, hashlib.sha256(raw).hexdigest())
    for node in g.node:
        attrs = []
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if isinstance(v, onnx.TensorProto):
                v = hashlib.sha256(v.SerializeToString()).hexdigest()
            attrs.append((a.name, repr(v)))
        put("node", node.domain, node.op_type, tuple(node.input), tuple(node.output), tuple(attrs))
    for kind, values in (("in", g.input), ("out", g.output)):
        for vi in values:
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim
            )
            put(kind, vi.name, vi.type.tensor_type.elem_type, dims)
    return h.hexdigest()[:16]


# --- weights ------------------------------------------------------------------------------------


def parameter_names(model: onnx.ModelProto) -> list[str]:
    """Names of the float32 initializers (the parameters), in graph order."""
    return [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]


def get_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {
        t.name: numpy_helper.to_array(t).astype(np.float32, copy=True)
        for t in model.graph.initializer
        if t.data_type == TensorProto.FLOAT
    }


def parameter_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    return {
        t.name: tuple(int(d) for d in t.dims)
        for t in model.graph.initializer
        if t.data_type == TensorProto.FLOAT
    }


def with_weights(model: onnx.ModelProto, weights: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose parameters named in ``weights`` are replaced (others kept)."""
    check_weights(parameter_shapes(model), weights)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name in weights:
            arr = np.ascontiguousarray(weights[t.name])
            out.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, t.name))
    return out


def write_inference_model(
    model: onnx.ModelProto | ModelSpec, path: str | Path, weights: Mapping[str, np.ndarray] | None = None
) -> Path:
    """Write the inference ONNX (with ``weights`` replacing the initial parameters, if given)."""
    proto = model.model if isinstance(model, ModelSpec) else model
    if weights:
        proto = with_weights(proto, weights)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    onnx.save(proto, str(tmp))
    tmp.replace(p)
    return p


# --- choosing what trains -----------------------------------------------------------------------


def select_parameters(names: Sequence[str], patterns: Iterable[str] | None) -> list[str]:
    """Parameters matching any of ``patterns`` (exact names, glob patterns such as ``expert.1.*``,
    or a group prefix such as ``fc3``/``expert.1`` matching ``fc3.*``). None = all. A pattern that
    matches nothing is an error naming it, so a typo never silently freezes the whole model."""
    if patterns is None:
        return list(names)
    chosen: set[str] = set()
    for pat in patterns:
        pat = pat.strip()
        if not pat:
            continue
        hits = [n for n in names if n == pat or fnmatch.fnmatchcase(n, pat) or n.startswith(pat + ".")]
        if not hits:
            raise ValueError(f"no parameter matches {pat!r}; the model has: {', '.join(names)}")
        chosen.update(hits)
    if not chosen:
        raise ValueError("no trainable parameters selected")
    return [n for n in names if n in chosen]


def expert_parameters(spec: ModelSpec, experts: Iterable[int]) -> list[str]:
    """The parameter names of the given experts of a ``moe`` model (EMS-FL's trainable set)."""
    out: list[str] = []
    for e in experts:
        key = f"expert.{int(e)}"
        if key not in spec.groups:
            n = sum(1 for g in spec.groups if g.startswith("expert."))
            raise ValueError(f"expert {e} does not exist; model {spec.name!r} has experts 0..{n - 1}")
        out.extend(spec.groups[key])
    return out


def moe_gates(weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Router affinities softmax(x W^T + b) per sample, shape [N, E]: what EMS-FL uses to assign
    experts to clusters from their local data."""
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    z = flat @ weights["router.weight"].T + weights["router.bias"]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    gates: np.ndarray = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return gates
