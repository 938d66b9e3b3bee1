"""NumPy evaluation of the float exporter graph, used to calibrate activation ranges.

Runs exactly the operators the writer emits (NHWC layout, inserted transposes), so the ranges it
records belong to the tensors that get quantized. Float64 accumulation keeps it an honest
reference; speed is irrelevant for a few hundred calibration samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.models.tflite.graph import Graph, Op

Arr = NDArray[np.float64]


def _act(x: Arr, name: str) -> Arr:
    if name == "RELU":
        return np.maximum(x, 0.0)
    if name == "NONE":
        return x
    raise AssertionError(f"activation {name}")


def _pad_same(x: Arr, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, fill: float) -> Arr:
    _, h, w, _ = x.shape
    pads = []
    for n, k, s, d in ((h, kh, sh, dh), (w, kw, sw, dw)):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=fill)


def _windows(x: Arr, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int) -> Arr:
    """[N, OH, OW, kh, kw, C] view of the sliding windows (VALID)."""
    n, h, w, c = x.shape
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    s = x.strides
    view: Arr = np.lib.stride_tricks.as_strided(
        x, (n, oh, ow, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False
    )
    return view


def _op(op: Op, args: list[Any]) -> Arr:
    o = op.options
    if op.code == "FULLY_CONNECTED":
        x, w, b = args
        y = x.reshape(-1, w.shape[1]) @ w.T
        return _act(y if b is None else y + b, o["activation"])
    if op.code == "CONV_2D":
        x, w, b = args
        kh, kw = w.shape[1], w.shape[2]
        if o["padding"] == "SAME":
            x = _pad_same(x, kh, kw, o["stride_h"], o["stride_w"], o["dilation_h"], o["dilation_w"], 0.0)
        win = _windows(
            np.ascontiguousarray(x), kh, kw, o["stride_h"], o["stride_w"], o["dilation_h"], o["dilation_w"]
        )
        y = np.einsum("nhwijc,oijc->nhwo", win, w, optimize=True) + b
        return _act(y, o["activation"])
    if op.code == "MAX_POOL_2D":
        (x,) = args
        kh, kw = o["filter_h"], o["filter_w"]
        if o["padding"] == "SAME":
            x = _pad_same(x, kh, kw, o["stride_h"], o["stride_w"], 1, 1, -np.inf)
        win = _windows(np.ascontiguousarray(x), kh, kw, o["stride_h"], o["stride_w"], 1, 1)
        return _act(win.max(axis=(3, 4)), o["activation"])
    if op.code == "PAD":
        x, p = args
        return np.pad(x, [tuple(int(v) for v in row) for row in p])
    if op.code == "RESHAPE":
        return np.reshape(args[0], o["new_shape"])
    if op.code == "TRANSPOSE":
        return np.transpose(args[0], [int(v) for v in args[1]])
    if op.code == "RELU":
        return _act(args[0], "RELU")
    if op.code == "ADD":
        return _act(args[0] + args[1], o["activation"])
    if op.code == "MUL":
        return _act(args[0] * args[1], o["activation"])
    if op.code == "SLICE":
        x, begin, size = args
        pairs = zip(begin.tolist(), size.tolist(), strict=True)
        idx = tuple(slice(b, None if n < 0 else b + n) for b, n in pairs)
        out_slice: Arr = x[idx]
        return out_slice
    if op.code == "SOFTMAX":
        z = args[0] * o["beta"]
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        out: Arr = z / z.sum(axis=-1, keepdims=True)
        return out
    raise AssertionError(f"no reference for {op.code}")


def evaluate(graph: Graph, inputs: dict[str, NDArray[Any]]) -> dict[str, Arr]:
    """Every activation tensor of `graph` for the given float inputs (float64)."""
    values: dict[str, Any] = {name: np.asarray(arr, dtype=np.float64) for name, arr in inputs.items()}
    for op in graph.ops:
        args: list[Any] = []
        for name in op.inputs:
            if not name:
                args.append(None)
            elif name in values:
                args.append(values[name])
            else:
                data = graph.tensors[name].data
                assert data is not None, f"tensor {name} has no value"
                args.append(data.astype(np.float64) if data.dtype == np.float32 else data)
        values[op.outputs[0]] = _op(op, args)
    return values
