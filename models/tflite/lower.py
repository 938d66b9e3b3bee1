"""Lower an inference ONNX graph (NCHW) to the exporter's TFLite-level graph (NHWC).

Supported ONNX operators: Gemm, MatMul, Conv (1-D and 2-D, group 1), MaxPool, Relu, Flatten,
Reshape, Softmax, Add, Mul, Slice (constant bounds, step 1), plus the no-ops Identity and Dropout
and Constant — enough for every model of the zoo, the moe included. Anything else raises
:class:`UnsupportedOpError` naming the operator and node.

Layout: ONNX convolutions are channels-first, TFLite's channels-last. Tensors that feed a
convolution or pooling are kept channels-last ("cl": [N,C,H,W] stored as [N,H,W,C]; a 1-D
[N,C,L] stored as [N,1,L,C] so that 1-D convolutions run as CONV_2D with a 1-high kernel). A
tensor goes back to ONNX order (TRANSPOSE) before anything that depends on element order —
Flatten, Reshape, graph outputs — so a Flatten after a convolution keeps ONNX's C,H,W order and
the dense weights that follow need no change. The TFLite model takes and returns tensors in the
ONNX model's own shapes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.models.tflite.graph import Graph, Op, Shape, UnsupportedOpError

SUPPORTED_OPS = (
    "Add",
    "Constant",
    "Conv",
    "Dropout",
    "Flatten",
    "Gemm",
    "Identity",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Slice",
    "Softmax",
)

PLAIN = "plain"
CL = "cl"


@dataclass
class _Value:
    name: str  # tensor in the lowered graph
    layout: str  # PLAIN or CL
    shape: Shape  # the ONNX (channels-first) shape


def load_onnx(model: Any) -> Any:
    """A ModelProto from a ModelProto or a path to an .onnx file."""
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "the TFLite exporter reads ONNX models: pip install 'orbitfl[train]' (onnx)"
        ) from None

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        try:
            return onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and others for a damaged file
            raise ValueError(f"{path} is not a readable ONNX model: {exc}") from exc
    raise TypeError(f"onnx_model must be an onnx.ModelProto or a path, not {type(model).__name__}")


def _check_weights(initializers: dict[str, NDArray[Any]], weights: Mapping[str, Any]) -> None:
    for name, arr in weights.items():
        if name not in initializers:
            known = ", ".join(sorted(initializers)) or "none"
            raise ValueError(f"weight {name!r} is not a parameter of the ONNX model (parameters: {known})")
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"weight {name!r} must be a numpy array, not {type(arr).__name__}")
        if arr.dtype != np.float32:
            raise TypeError(f"weight {name!r} must be float32, got {arr.dtype}")
        if arr.shape != initializers[name].shape:
            raise ValueError(
                f"weight {name!r} has shape {arr.shape}, the model expects {initializers[name].shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"weight {name!r} contains NaN or Inf")


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dims(type_proto: Any, what: str) -> Shape:
    tt = type_proto.tensor_type
    if not tt.HasField("shape"):
        raise ValueError(f"{what} has no shape in the ONNX model")
    return tuple(
        int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim
    )


def _broadcast(a: Shape, b: Shape) -> Shape:
    n = max(len(a), len(b))
    a2 = (1,) * (n - len(a)) + tuple(a)
    b2 = (1,) * (n - len(b)) + tuple(b)
    out: list[int | None] = []
    for x, y in zip(a2, b2, strict=True):
        if x == 1:
            out.append(y)
        elif y == 1 or x == y or y is None:
            out.append(x)
        elif x is None:
            out.append(y)
        else:
            raise ValueError(f"shapes {a} and {b} do not broadcast")
    return tuple(out)


def _tfl_shape(shape: Shape, layout: str) -> Shape:
    if layout == PLAIN:
        return shape
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    n, c, length = shape
    return (n, 1, length, c)


class _Lowering:
    def __init__(self, model: Any, weights: Mapping[str, Any] | None) -> None:
        from onnx import numpy_helper

        self.model = model
        self.g = Graph()
        self.consts: dict[str, NDArray[Any]] = {
            init.name: numpy_helper.to_array(init) for init in model.graph.initializer
        }
        if weights:
            _check_weights(self.consts, weights)
            for name, arr in weights.items():
                self.consts[name] = np.ascontiguousarray(arr, dtype=np.float32)
        self.env: dict[str, _Value] = {}
        self.converted: dict[tuple[str, str], _Value] = {}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        # One list of node objects for the whole pass: fusion marks consumers to skip by identity.
        self.nodes = list(model.graph.node)
        self.consumers: dict[str, list[Any]] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {o.name for o in model.graph.output}
        self.skip: set[int] = set()

    # -- helpers ---------------------------------------------------------------------------
    def _only_consumer(self, name: str) -> Any | None:
        users = self.consumers.get(name, [])
        if len(users) == 1 and name not in self.graph_outputs:
            return users[0]
        return None

    def _fused_relu(self, node: Any) -> tuple[str, str]:
        """(activation, output ONNX name): fold a Relu that is the sole consumer of the output."""
        nxt = self._only_consumer(node.output[0])
        if nxt is not None and nxt.op_type == "Relu":
            self.skip.add(id(nxt))
            return "RELU", nxt.output[0]
        return "NONE", node.output[0]

    def _value(self, name: str, node: Any) -> _Value:
        if name in self.env:
            return self.env[name]
        if name in self.consts:
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: input {name!r} is a constant where the exporter "
                "needs a computed tensor"
            )
        raise ValueError(f"{node.op_type} node {node.name!r}: input {name!r} is not defined before use")

    def _const(self, name: str, node: Any, what: str) -> NDArray[Any]:
        if name not in self.consts:
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: {what} {name!r} must be a constant (initializer)"
            )
        return self.consts[name]

    def _emit(self, code: str, inputs: list[str], out_base: str, shape: Shape, **options: Any) -> str:
        out = self.g.activation(out_base, shape)
        self.g.ops.append(Op(code, inputs, [out], dict(options)))
        return out

    def _reshape(self, src: str, new_shape: Shape, base: str) -> str:
        spec = [-1 if d is None else int(d) for d in new_shape]
        if spec.count(-1) > 1:
            raise UnsupportedOpError(
                f"reshape of {base!r} to {new_shape} has more than one dynamic dimension"
            )
        shape_t = self.g.const(f"{base}/shape", np.asarray(spec, dtype=np.int32))
        return self._emit("RESHAPE", [src, shape_t], base, new_shape, new_shape=spec)

    def _transpose(self, src: str, perm: tuple[int, ...], shape: Shape, base: str) -> str:
        perm_t = self.g.const(f"{base}/perm", np.asarray(perm, dtype=np.int32))
        return self._emit("TRANSPOSE", [src, perm_t], base, shape)

    def to_plain(self, v: _Value) -> _Value:
        if v.layout == PLAIN:
            return v
        key = (v.name, PLAIN)
        if key not in self.converted:
            if len(v.shape) == 4:
                t = self._transpose(v.name, (0, 3, 1, 2), v.shape, f"{v.name}/nchw")
            else:
                n, c, length = v.shape
                t = self._transpose(v.name, (0, 3, 1, 2), (n, c, 1, length), f"{v.name}/nc1l")
                t = self._reshape(t, v.shape, f"{v.name}/ncl")
            self.converted[key] = _Value(t, PLAIN, v.shape)
        return self.converted[key]

    def to_cl(self, v: _Value, node: Any) -> _Value:
        if v.layout == CL:
            return v
        if len(v.shape) not in (3, 4):
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: input of rank {len(v.shape)}; only 1-D (N,C,L) and "
                "2-D (N,C,H,W) inputs are supported"
            )
        key = (v.name, CL)
        if key not in self.converted:
            if len(v.shape) == 4:
                t = self._transpose(v.name, (0, 2, 3, 1), _tfl_shape(v.shape, CL), f"{v.name}/nhwc")
            else:
                n, c, length = v.shape
                t = self._transpose(v.name, (0, 2, 1), (n, length, c), f"{v.name}/nlc")
                t = self._reshape(t, _tfl_shape(v.shape, CL), f"{v.name}/n1lc")
            self.converted[key] = _Value(t, CL, v.shape)
        return self.converted[key]

    # -- spatial ops -----------------------------------------------------------------------
    def _spatial(
        self, node: Any, x: _Value, kernel: list[int], attrs: dict[str, Any]
    ) -> tuple[str, list[tuple[int, int]], list[int], list[int], list[int]]:
        """(TFLite padding, explicit (begin, end) pads to add, strides, dilations, output spatial)."""
        nsp = len(x.shape) - 2
        spatial = x.shape[2:]
        if any(d is None for d in spatial):
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: spatial size must be fixed, got {x.shape}"
            )
        size = [int(d) for d in spatial if d is not None]
        strides = list(attrs.get("strides", [1] * nsp))
        dil = list(attrs.get("dilations", [1] * nsp))
        pads = list(attrs.get("pads", [0] * (2 * nsp)))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        ceil_mode = int(attrs.get("ceil_mode", 0))
        eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
        same_out = [math.ceil(n / s) for n, s in zip(size, strides, strict=True)]
        same_pads = []
        for n, s, e, o in zip(size, strides, eff, same_out, strict=True):
            total = max((o - 1) * s + e - n, 0)
            same_pads.append((total // 2, total - total // 2))
        if auto_pad in ("SAME_UPPER",):
            pairs = same_pads
        elif auto_pad == "VALID":
            pairs = [(0, 0)] * nsp
        elif auto_pad == "SAME_LOWER":
            pairs = [(e, b) for b, e in same_pads]
        elif auto_pad in ("NOTSET", ""):
            pairs = [(pads[i], pads[i + nsp]) for i in range(nsp)]
        else:
            raise UnsupportedOpError(f"{node.op_type} node {node.name!r}: auto_pad={auto_pad!r}")
        rnd = math.ceil if ceil_mode else math.floor
        rows = list(zip(size, pairs, eff, strides, strict=True))
        onnx_out = [int(rnd((n + b + e - k) / s)) + 1 for n, (b, e), k, s in rows]
        if pairs == [(0, 0)] * nsp:
            padding, extra = "VALID", [(0, 0)] * nsp
            tfl_out = [(n - k) // s + 1 for n, k, s in zip(size, eff, strides, strict=True)]
        elif pairs == same_pads:
            padding, extra, tfl_out = "SAME", [(0, 0)] * nsp, same_out
        else:
            padding, extra = "VALID", pairs
            tfl_out = [(n + b + e - k) // s + 1 for n, (b, e), k, s in rows]
        if tfl_out != onnx_out:
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: padding {pairs} with ceil_mode={ceil_mode} has no "
                "TFLite equivalent"
            )
        return padding, extra, strides, dil, onnx_out

    def _lower_conv(self, node: Any, attrs: dict[str, Any]) -> None:
        x = self._value(node.input[0], node)
        w = self._const(node.input[1], node, "weight")
        if int(attrs.get("group", 1)) != 1:
            raise UnsupportedOpError(f"Conv node {node.name!r}: group={attrs['group']} (only group=1)")
        if w.ndim not in (3, 4) or w.ndim != len(x.shape):
            raise UnsupportedOpError(f"Conv node {node.name!r}: only 1-D and 2-D convolutions are supported")
        kernel = list(attrs.get("kernel_shape", w.shape[2:]))
        padding, extra, strides, dil, out_sp = self._spatial(node, x, kernel, attrs)
        xc = self.to_cl(x, node)
        src = xc.name
        if w.ndim == 4:
            w_ohwi = np.ascontiguousarray(w.transpose(0, 2, 3, 1))
            strides_hw, dil_hw, pads_hw = strides, dil, extra
        else:
            w_ohwi = np.ascontiguousarray(w.transpose(0, 2, 1)[:, None, :, :])
            strides_hw, dil_hw, pads_hw = [1, *strides], [1, *dil], [(0, 0), *extra]
        if any(p != (0, 0) for p in pads_hw):
            n, h, wd, c = _tfl_shape(x.shape, CL)
            assert h is not None and wd is not None
            padded = (n, h + sum(pads_hw[0]), wd + sum(pads_hw[1]), c)
            pads_t = self.g.const(
                f"{node.output[0]}/paddings", np.asarray([(0, 0), *pads_hw, (0, 0)], dtype=np.int32)
            )
            src = self._emit("PAD", [src, pads_t], f"{node.output[0]}/pad", padded)
        out_channels = int(w.shape[0])
        bias = (
            self._const(node.input[2], node, "bias").astype(np.float32)
            if len(node.input) > 2 and node.input[2]
            else np.zeros(out_channels, np.float32)
        )
        act, out_name = self._fused_relu(node)
        out_shape: Shape = (x.shape[0], out_channels, *out_sp)
        has_bias = len(node.input) > 2 and bool(node.input[2])
        w_t = self.g.const(node.input[1], w_ohwi.astype(np.float32))
        b_t = self.g.const(node.input[2] if has_bias else f"{out_name}/bias", bias)
        out = self._emit(
            "CONV_2D",
            [src, w_t, b_t],
            out_name,
            _tfl_shape(out_shape, CL),
            padding=padding,
            stride_h=strides_hw[0],
            stride_w=strides_hw[1],
            dilation_h=dil_hw[0],
            dilation_w=dil_hw[1],
            activation=act,
        )
        self.env[out_name] = _Value(out, CL, out_shape)

    def _lower_maxpool(self, node: Any, attrs: dict[str, Any]) -> None:
        if len(node.output) > 1 and node.output[1]:
            raise UnsupportedOpError(f"MaxPool node {node.name!r}: the Indices output is not supported")
        if int(attrs.get("storage_order", 0)) != 0:
            raise UnsupportedOpError(f"MaxPool node {node.name!r}: storage_order=1")
        x = self._value(node.input[0], node)
        kernel = list(attrs["kernel_shape"])
        if len(kernel) != len(x.shape) - 2 or len(kernel) not in (1, 2):
            raise UnsupportedOpError(f"MaxPool node {node.name!r}: only 1-D and 2-D pooling is supported")
        if any(d != 1 for d in attrs.get("dilations", [1] * len(kernel))):
            raise UnsupportedOpError(f"MaxPool node {node.name!r}: dilations other than 1")
        padding, extra, strides, _, out_sp = self._spatial(node, x, kernel, attrs)
        if any(p != (0, 0) for p in extra):
            raise UnsupportedOpError(
                f"MaxPool node {node.name!r}: pads {attrs.get('pads')} are neither VALID nor SAME"
            )
        if len(kernel) == 1:
            kernel, strides = [1, *kernel], [1, *strides]
        xc = self.to_cl(x, node)
        out_shape: Shape = (x.shape[0], x.shape[1], *out_sp)
        out = self._emit(
            "MAX_POOL_2D",
            [xc.name],
            node.output[0],
            _tfl_shape(out_shape, CL),
            padding=padding,
            stride_h=strides[0],
            stride_w=strides[1],
            filter_h=kernel[0],
            filter_w=kernel[1],
            activation="NONE",
        )
        self.env[node.output[0]] = _Value(out, CL, out_shape)

    # -- dense and element-wise ops --------------------------------------------------------
    def _fc(
        self,
        node: Any,
        x: _Value,
        w_out_in: NDArray[Any],
        bias: NDArray[Any] | None,
        w_name: str,
        b_name: str,
        act: str,
        out_name: str,
    ) -> None:
        if len(x.shape) != 2:
            raise UnsupportedOpError(
                f"{node.op_type} node {node.name!r}: input must be 2-D (batch, features), got shape {x.shape}"
            )
        if x.shape[1] is not None and x.shape[1] != w_out_in.shape[1]:
            raise ValueError(
                f"{node.op_type} node {node.name!r}: input has {x.shape[1]} features, weight expects "
                f"{w_out_in.shape[1]}"
            )
        w_t = self.g.const(w_name, np.ascontiguousarray(w_out_in, dtype=np.float32))
        b_t = self.g.const(b_name, np.ascontiguousarray(bias, dtype=np.float32)) if bias is not None else ""
        out_shape: Shape = (x.shape[0], int(w_out_in.shape[0]))
        out = self._emit("FULLY_CONNECTED", [x.name, w_t, b_t], out_name, out_shape, activation=act)
        self.env[out_name] = _Value(out, PLAIN, out_shape)

    def _lower_gemm(self, node: Any, attrs: dict[str, Any]) -> None:
        if int(attrs.get("transA", 0)):
            raise UnsupportedOpError(f"Gemm node {node.name!r}: transA=1")
        x = self.to_plain(self._value(node.input[0], node))
        b = self._const(node.input[1], node, "B")
        w = (b if int(attrs.get("transB", 0)) else b.T) * np.float32(attrs.get("alpha", 1.0))
        bias = None
        if len(node.input) > 2 and node.input[2]:
            c = self._const(node.input[2], node, "C") * np.float32(attrs.get("beta", 1.0))
            if c.size not in (1, w.shape[0]) or (c.ndim == 2 and c.shape[0] != 1):
                raise UnsupportedOpError(
                    f"Gemm node {node.name!r}: C of shape {c.shape} is not a per-output bias"
                )
            bias = np.broadcast_to(c.reshape(-1), (w.shape[0],))
        act, out_name = self._fused_relu(node)
        self._fc(node, x, w, bias, node.input[1], node.input[2] if bias is not None else "", act, out_name)

    def _lower_matmul(self, node: Any) -> None:
        x = self.to_plain(self._value(node.input[0], node))
        b = self._const(node.input[1], node, "B")
        if b.ndim != 2:
            raise UnsupportedOpError(f"MatMul node {node.name!r}: B must be a 2-D constant")
        # MatMul followed by Add of a constant vector is a dense layer with bias.
        nxt = self._only_consumer(node.output[0])
        if nxt is not None and nxt.op_type == "Add":
            other = nxt.input[1] if nxt.input[0] == node.output[0] else nxt.input[0]
            if other in self.consts and self.consts[other].size == b.shape[1]:
                self.skip.add(id(nxt))
                act, out_name = self._fused_relu(nxt)
                self._fc(node, x, b.T, self.consts[other].reshape(-1), node.input[1], other, act, out_name)
                return
        act, out_name = self._fused_relu(node)
        self._fc(node, x, b.T, None, node.input[1], "", act, out_name)

    def _lower_binary(self, node: Any, code: str) -> None:
        """Add / Mul (commutative, numpy broadcasting) as TFLite ADD / MUL."""
        fold = {"ADD": np.add, "MUL": np.multiply}[code]
        a_name, b_name = node.input[0], node.input[1]
        if a_name in self.consts and b_name in self.consts:
            self.consts[node.output[0]] = fold(self.consts[a_name], self.consts[b_name])
            return
        if a_name in self.consts:
            a_name, b_name = b_name, a_name
        a = self._value(a_name, node)
        act, out_name = self._fused_relu(node)
        if b_name in self.consts:
            c = self.consts[b_name].astype(np.float32)
            out_shape = _broadcast(a.shape, c.shape)
            if out_shape != a.shape:
                raise UnsupportedOpError(
                    f"{node.op_type} node {node.name!r}: the constant operand would enlarge the tensor"
                )
            if a.layout == CL:
                full = c.reshape((1,) * (len(a.shape) - c.ndim) + c.shape)
                c = full.transpose(0, 2, 3, 1) if full.ndim == 4 else full.transpose(0, 2, 1)[:, None, :, :]
            c_t = self.g.const(b_name, np.ascontiguousarray(c))
            out = self._emit(code, [a.name, c_t], out_name, _tfl_shape(out_shape, a.layout), activation=act)
            self.env[out_name] = _Value(out, a.layout, out_shape)
            return
        b = self._value(b_name, node)
        out_shape = _broadcast(a.shape, b.shape)
        if a.layout != b.layout or a.shape != b.shape:
            a, b = self.to_plain(a), self.to_plain(b)
        out = self._emit(code, [a.name, b.name], out_name, _tfl_shape(out_shape, a.layout), activation=act)
        self.env[out_name] = _Value(out, a.layout, out_shape)

    def _lower_slice(self, node: Any) -> None:
        x = self.to_plain(self._value(node.input[0], node))
        rank = len(x.shape)
        starts = [int(v) for v in self._const(node.input[1], node, "starts").reshape(-1)]
        ends = [int(v) for v in self._const(node.input[2], node, "ends").reshape(-1)]
        axes = (
            [int(v) for v in self._const(node.input[3], node, "axes").reshape(-1)]
            if len(node.input) > 3 and node.input[3]
            else list(range(len(starts)))
        )
        steps = (
            [int(v) for v in self._const(node.input[4], node, "steps").reshape(-1)]
            if len(node.input) > 4 and node.input[4]
            else [1] * len(starts)
        )
        if any(st != 1 for st in steps):
            raise UnsupportedOpError(f"Slice node {node.name!r}: steps other than 1")
        begin, size = [0] * rank, [-1] * rank
        shape = list(x.shape)
        for axis, start, end in zip(axes, starts, ends, strict=True):
            axis = axis + rank if axis < 0 else axis
            dim = x.shape[axis]
            if dim is None:
                raise UnsupportedOpError(f"Slice node {node.name!r}: slicing the dynamic axis {axis}")
            lo = min(max(start + dim if start < 0 else start, 0), dim)
            hi = min(max(end + dim if end < 0 else end, 0), dim)
            if hi <= lo:
                raise UnsupportedOpError(f"Slice node {node.name!r}: empty slice on axis {axis}")
            begin[axis], size[axis], shape[axis] = lo, hi - lo, hi - lo
        begin_t = self.g.const(f"{node.output[0]}/begin", np.asarray(begin, dtype=np.int32))
        size_t = self.g.const(f"{node.output[0]}/size", np.asarray(size, dtype=np.int32))
        out_shape: Shape = tuple(shape)
        out = self._emit("SLICE", [x.name, begin_t, size_t], node.output[0], out_shape)
        self.env[node.output[0]] = _Value(out, PLAIN, out_shape)

    def _lower_softmax(self, node: Any, attrs: dict[str, Any]) -> None:
        x = self._value(node.input[0], node)
        rank = len(x.shape)
        axis = int(attrs.get("axis", -1 if self.opset >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        if x.layout == CL and axis == 1 and self.opset >= 13:
            pass  # the channel axis is the last one in channels-last order
        else:
            x = self.to_plain(x)
            if axis != rank - 1:
                raise UnsupportedOpError(
                    f"Softmax node {node.name!r}: axis={axis} of a rank-{rank} tensor (only the last axis)"
                )
        out = self._emit("SOFTMAX", [x.name], node.output[0], _tfl_shape(x.shape, x.layout), beta=1.0)
        self.env[node.output[0]] = _Value(out, x.layout, x.shape)

    def _lower_flatten(self, node: Any, attrs: dict[str, Any]) -> None:
        x = self.to_plain(self._value(node.input[0], node))
        axis = int(attrs.get("axis", 1))
        axis = axis + len(x.shape) if axis < 0 else axis

        def prod(dims: Shape) -> int | None:
            return None if any(d is None for d in dims) else int(np.prod([d for d in dims if d is not None]))

        out_shape = (prod(x.shape[:axis]), prod(x.shape[axis:]))
        out = self._reshape(x.name, out_shape, node.output[0])
        self.env[node.output[0]] = _Value(out, PLAIN, out_shape)

    def _lower_reshape(self, node: Any, attrs: dict[str, Any]) -> None:
        x = self.to_plain(self._value(node.input[0], node))
        target = [int(d) for d in self._const(node.input[1], node, "shape").reshape(-1)]
        if int(attrs.get("allowzero", 0)) and 0 in target:
            raise UnsupportedOpError(f"Reshape node {node.name!r}: allowzero=1 with a zero dimension")
        dims: list[int | None] = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        if -1 in dims:
            i = dims.index(-1)
            rest = [d for j, d in enumerate(dims) if j != i]
            in_static = int(np.prod([d for d in x.shape if d is not None]))
            out_static = int(np.prod([d for d in rest if d is not None]))
            in_dynamic, out_dynamic = x.shape.count(None), rest.count(None)
            if in_dynamic == out_dynamic and in_static % out_static == 0:
                dims[i] = in_static // out_static  # the batch is carried over by a 0 entry
            elif in_dynamic == 1 and out_dynamic == 0:
                dims[i] = None  # the -1 absorbs the batch
            else:
                raise UnsupportedOpError(
                    f"Reshape node {node.name!r}: cannot resolve {target} for input shape {x.shape}"
                )
        out_shape: Shape = tuple(dims)
        out = self._reshape(x.name, out_shape, node.output[0])
        self.env[node.output[0]] = _Value(out, PLAIN, out_shape)

    # -- driver ----------------------------------------------------------------------------
    def run(self) -> Graph:
        from onnx import TensorProto

        for inp in self.model.graph.input:
            if inp.name in self.consts:
                continue
            if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
                raise UnsupportedOpError(f"graph input {inp.name!r} is not float32")
            shape = _dims(inp.type, f"graph input {inp.name!r}")
            self.g.inputs.append(self.g.activation(inp.name, shape))
            self.env[inp.name] = _Value(inp.name, PLAIN, shape)
        if not self.g.inputs:
            raise ValueError("the ONNX model has no graph input")
        for node in self.nodes:
            if id(node) in self.skip:
                continue
            if node.domain not in ("", "ai.onnx"):
                raise UnsupportedOpError(
                    f"ONNX operator {node.domain}.{node.op_type} (node {node.name!r}) is not supported by "
                    f"the TFLite exporter; supported: {', '.join(SUPPORTED_OPS)}"
                )
            attrs = _attrs(node)
            op = node.op_type
            if op == "Gemm":
                self._lower_gemm(node, attrs)
            elif op == "MatMul":
                self._lower_matmul(node)
            elif op == "Conv":
                self._lower_conv(node, attrs)
            elif op == "MaxPool":
                self._lower_maxpool(node, attrs)
            elif op == "Relu":
                x = self._value(node.input[0], node)
                out = self._emit("RELU", [x.name], node.output[0], _tfl_shape(x.shape, x.layout))
                self.env[node.output[0]] = _Value(out, x.layout, x.shape)
            elif op in ("Add", "Mul"):
                self._lower_binary(node, op.upper())
            elif op == "Slice":
                self._lower_slice(node)
            elif op == "Softmax":
                self._lower_softmax(node, attrs)
            elif op == "Flatten":
                self._lower_flatten(node, attrs)
            elif op == "Reshape":
                self._lower_reshape(node, attrs)
            elif op in ("Identity", "Dropout"):
                if len(node.output) > 1 and node.output[1] and node.output[1] in self.consumers:
                    raise UnsupportedOpError(f"Dropout node {node.name!r}: the mask output is used")
                if node.input[0] in self.consts:
                    self.consts[node.output[0]] = self.consts[node.input[0]]
                else:
                    self.env[node.output[0]] = self._value(node.input[0], node)
            elif op == "Constant":
                from onnx import numpy_helper

                if "value" not in attrs:
                    raise UnsupportedOpError(f"Constant node {node.name!r}: only the 'value' attribute")
                self.consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
            else:
                raise UnsupportedOpError(
                    f"ONNX operator {op!r} (node {node.name!r}) is not supported by the TFLite exporter; "
                    f"supported: {', '.join(SUPPORTED_OPS)}"
                )
        for out in self.model.graph.output:
            if out.name not in self.env:
                raise UnsupportedOpError(f"graph output {out.name!r} is a constant or is never computed")
            v = self.to_plain(self.env[out.name])
            self._name_output(v.name, out.name)
        return self.g

    def _name_output(self, current: str, wanted: str) -> None:
        """Give the output tensor the ONNX output's name (a channels-last twin may hold it)."""
        if current == wanted:
            self.g.outputs.append(wanted)
            return
        if wanted in self.g.tensors:
            self._rename(wanted, self.g.unique(f"{wanted}/nhwc"))
        self._rename(current, wanted)
        self.g.outputs.append(wanted)

    def _rename(self, old: str, new: str) -> None:
        t = self.g.tensors.pop(old)
        t.name = new
        self.g.tensors[new] = t
        for op in self.g.ops:
            op.inputs = [new if n == old else n for n in op.inputs]
            op.outputs = [new if n == old else n for n in op.outputs]
        self.g.inputs = [new if n == old else n for n in self.g.inputs]
        self.g.outputs = [new if n == old else n for n in self.g.outputs]


def lower(onnx_model: Any, weights: Mapping[str, Any] | None = None) -> Graph:
    """Lower an inference ONNX model (ModelProto or path) to a float32 TFLite-level graph.

    `weights` (name -> float32 array) replaces initializers of the same name and shape.
    """
    model = load_onnx(onnx_model)
    return _Lowering(model, weights).run()
