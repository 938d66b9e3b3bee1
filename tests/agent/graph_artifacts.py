"""Portable (stock ONNX Runtime) training artifacts for the trainer tests.

The real builder is ``orbitfl.models.artifacts.build_artifacts(..., backend="onnxruntime")``
(branch autodiff); :func:`build` uses it whenever it exists. Until then, and as an independent
cross-check of the contract, :func:`build_mlp_by_hand` writes the artifacts of a zoo ``mlp`` (flat
input, Gemm/ReLU layers, ce or mse) with a backward pass written out by hand, following
/work/notes/trainer_contract.md exactly. Only the parent test process imports this (and onnx).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from orbitfl.models import artifacts, zoo
from orbitfl.models.manifest import Manifest

OPSET, IR = 17, 8


def builder_has_backend() -> bool:
    return "backend" in inspect.signature(artifacts.build_artifacts).parameters


def build(
    out: Path,
    name: str,
    *,
    trainable: Sequence[str] | None = None,
    optimizer: str = "adamw",
    spec: zoo.ModelSpec | None = None,
    **options: Any,
) -> Path:
    """Artifacts for backend "onnxruntime"; skips the test if only the stand-in could do it and it
    cannot (it knows the plain mlp only)."""
    spec = spec or zoo.build(name, **options)
    if builder_has_backend():
        artifacts.build_artifacts(
            spec,
            out,
            trainable=trainable,
            optimizer=optimizer,
            backend="onnxruntime",  # type: ignore[call-arg]
        )
        return out
    if spec.name != "mlp" or len(spec.input_shape) != 1:
        pytest.skip(f"portable artifacts for {spec.name!r} need the graph builder (branch autodiff)")
    return build_mlp_by_hand(spec, out, trainable=trainable, optimizer=optimizer)


def _v(name: str, dtype: int, shape: Sequence[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def build_mlp_by_hand(
    spec: zoo.ModelSpec,
    out: Path,
    *,
    trainable: Sequence[str] | None = None,
    optimizer: str = "adamw",
    loss: str | None = None,
) -> Path:
    loss = loss or spec.default_loss
    shapes = zoo.parameter_shapes(spec.model)
    names = list(shapes)
    chosen = zoo.select_parameters(names, trainable)
    weights = zoo.get_weights(spec.model)
    layers = sorted({n.split(".")[0] for n in names}, key=lambda s: int(s[2:]))
    c = spec.num_outputs
    nodes: list[onnx.NodeProto] = []

    def node(op: str, ins: list[str], outs: list[str], **attrs: Any) -> None:
        nodes.append(helper.make_node(op, ins, outs, name=f"n{len(nodes)}_{op}", **attrs))

    def const(name: str, value: np.ndarray) -> str:
        node("Constant", [], [name], value=numpy_helper.from_array(value, name))
        return name

    # forward
    acts = ["input"]
    pre: list[str] = []
    for i, layer in enumerate(layers):
        z = "output" if i == len(layers) - 1 else f"{layer}.z"
        node("Gemm", [acts[-1], f"{layer}.weight", f"{layer}.bias"], [z], transB=1)
        pre.append(z)
        if i < len(layers) - 1:
            node("Relu", [z], [f"{layer}.a"])
            acts.append(f"{layer}.a")
    fwd = list(nodes)

    # loss and d loss / d output
    if loss == "ce":
        node("SoftmaxCrossEntropyLoss", ["output", "target"], ["loss", "logp"], reduction="mean")
        node("Exp", ["logp"], ["prob"])
        const("depth", np.array(c, np.int64))
        const("onoff", np.array([0.0, 1.0], np.float32))
        node("OneHot", ["target", "depth", "onoff"], ["onehot"], axis=-1)
        node("Sub", ["prob", "onehot"], ["diff"])
        node("Shape", ["output"], ["oshape"])
        node("Gather", ["oshape", const("zero", np.array(0, np.int64))], ["n_i"], axis=0)
        node("Cast", ["n_i"], ["n_f"], to=TensorProto.FLOAT)
        node("Div", ["diff", "n_f"], ["d.output"])
    else:
        node("Sub", ["output", "target"], ["diff"])
        node("Mul", ["diff", "diff"], ["sq"])
        node("ReduceMean", ["sq"], ["loss"], keepdims=0)
        node("Size", ["output"], ["n_i"])
        node("Cast", ["n_i"], ["n_f"], to=TensorProto.FLOAT)
        node("Mul", ["diff", const("two", np.array(2.0, np.float32))], ["diff2"])
        node("Div", ["diff2", "n_f"], ["d.output"])
    loss_nodes = nodes[len(fwd) :]

    # backward
    axes0 = const("axes0", np.array([0], np.int64))
    first_needed = min(
        (i for i, layer in enumerate(layers) if f"{layer}.weight" in chosen or f"{layer}.bias" in chosen),
        default=len(layers),
    )
    dz = "d.output"
    for i in range(len(layers) - 1, first_needed - 1, -1):
        layer = layers[i]
        if f"{layer}.weight" in chosen:
            node("Gemm", [dz, acts[i]], [f"grad.{layer}.weight"], transA=1)
        if f"{layer}.bias" in chosen:
            node("ReduceSum", [dz, axes0], [f"grad.{layer}.bias"], keepdims=0)
        if i > first_needed:
            node("MatMul", [dz, f"{layer}.weight"], [f"{layer}.da"])
            node(
                "Greater", [pre[i - 1], const(f"{layer}.zero", np.array(0.0, np.float32))], [f"{layer}.mask"]
            )
            zf = const(f"{layer}.zf", np.array(0.0, np.float32))
            node("Where", [f"{layer}.mask", f"{layer}.da", zf], [f"{layers[i - 1]}.dz"])
            dz = f"{layers[i - 1]}.dz"

    n_in = spec.input_shape[0]
    target = (
        _v("target", TensorProto.INT64, ["N"]) if loss == "ce" else _v("target", TensorProto.FLOAT, ["N", c])
    )
    inputs = [_v("input", TensorProto.FLOAT, ["N", n_in]), target]
    inputs += [_v(n, TensorProto.FLOAT, shapes[n]) for n in names]
    outs = [_v("loss", TensorProto.FLOAT, []), _v("output", TensorProto.FLOAT, ["N", c])]

    def save(graph_nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto], fname: str) -> None:
        g = helper.make_graph(graph_nodes, fname, inputs, outputs)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = IR
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, out / fname)

    out.mkdir(parents=True, exist_ok=True)
    grads = [_v(f"grad.{n}", TensorProto.FLOAT, shapes[n]) for n in chosen]
    save(nodes, outs + grads, "train_step.onnx")
    save(fwd + loss_nodes, outs, "eval_step.onnx")
    zoo.write_inference_model(spec, out / "inference.onnx")
    np.savez(out / "params.npz", **weights)  # type: ignore[arg-type]
    manifest = Manifest(
        model=spec.name,
        options=dict(spec.options),
        input_shape=tuple(spec.input_shape),
        task=spec.task,
        num_outputs=spec.num_outputs,
        loss=loss,
        optimizer=optimizer,
        parameters=shapes,
        trainable=chosen,
        groups=dict(spec.groups),
    )
    data = manifest.to_json()
    data["backend"] = "onnxruntime"
    data["files"] = {
        "inference": "inference.onnx",
        "train_step": "train_step.onnx",
        "eval_step": "eval_step.onnx",
        "params": "params.npz",
    }
    (out / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    return out
