"""Full-integer (int8) quantization of the exporter graph, as the TFLite int8 kernels require it.

- weights: int8, symmetric (zero point 0, codes in [-127, 127]), one scale per tensor or per
  output channel (quantized dimension 0), fitted by orbitfl's LAQ kernel (or max|w| / 127);
- activations: int8, asymmetric, scale and zero point from the range seen on calibration inputs
  (always including 0, so that zero padding and ReLU are exact);
- biases: int32 with scale = input scale * weight scale (per channel when the weight is);
- operators that only move values (RESHAPE, TRANSPOSE, MAX_POOL_2D, PAD, SLICE) keep their input's
  parameters, SOFTMAX outputs use scale 1/256 and zero point -128: the kernels reject anything else;
- the model keeps float input and output: a QUANTIZE op after each input and a DEQUANTIZE op
  before each output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitfl.arrays import F32
from orbitfl.kernels import backend
from orbitfl.models.tflite.graph import Graph, Op, QuantParams, Tensor
from orbitfl.models.tflite.reference import evaluate

I8 = NDArray[np.int8]
# A weight quantizer maps a float32 vector to (int8 codes in [-127, 127], scale > 0).
WeightQuantizer = Callable[[F32], tuple[I8, float]]

_PASS_THROUGH = {"RESHAPE", "TRANSPOSE", "MAX_POOL_2D", "PAD", "SLICE"}
_SOFTMAX_SCALE = 1.0 / 256.0
_SOFTMAX_ZERO = -128


def maxabs_quantizer(x: F32) -> tuple[I8, float]:
    """Symmetric int8 with scale max|x| / 127 (the TensorFlow converter's rule)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    scale = m / 127.0 if m > 0.0 else 1.0
    codes = np.clip(np.rint(x.astype(np.float64) / scale), -127, 127).astype(np.int8)
    return codes, scale


def laq_quantizer(x: F32) -> tuple[I8, float]:
    """Symmetric int8 from orbitfl's own loss-aware quantizer (the C++ `laq_quantize` kernel).

    At 8 bits LAQ's levels are alpha * (j - 127) / 127, j = 0..254: exactly TFLite's symmetric
    int8 weight grid with scale alpha / 127. With unit curvature weights it fits alpha to the least
    squared error instead of taking max|x|, so one outlier no longer coarsens every other step.
    """

    kern = backend("cpp")
    x = np.ascontiguousarray(x, dtype=np.float32)
    packed, alpha, _ = kern.laq_quantize(x, np.ones_like(x), 8)
    if not alpha > 0.0:
        return np.zeros(x.shape, np.int8), 1.0  # an all-zero row: any positive scale is exact
    codes = kern.unpack_bits(packed, x.size, 8).astype(np.int16) - 127
    return codes.astype(np.int8), float(alpha) / 127.0


WEIGHT_QUANTIZERS: dict[str, WeightQuantizer] = {"laq": laq_quantizer, "maxabs": maxabs_quantizer}


def quantize_weights(w: F32, per_channel: bool, quantizer: WeightQuantizer = laq_quantizer) -> tuple[I8, F32]:
    """int8 codes (shape of w) and scales (one per row of axis 0, or one) for a weight tensor."""
    if not per_channel:
        codes, scale = quantizer(np.ascontiguousarray(w, dtype=np.float32).reshape(-1))
        return codes.reshape(w.shape), np.asarray([scale], dtype=np.float32)
    rows = np.ascontiguousarray(w, dtype=np.float32).reshape(w.shape[0], -1)
    out = np.empty(rows.shape, dtype=np.int8)
    scales = np.empty(rows.shape[0], dtype=np.float32)
    for i, row in enumerate(rows):
        out[i], scales[i] = quantizer(np.ascontiguousarray(row))
    return out.reshape(w.shape), scales


def activation_params(lo: float, hi: float) -> QuantParams:
    """int8 asymmetric parameters covering [lo, hi] and 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0
    if not scale > 0.0:
        scale = 1.0 / 255.0  # a tensor that is always 0: any scale represents it exactly
    zero = int(np.clip(np.rint(-128.0 - lo / scale), -128, 127))
    return QuantParams(np.asarray([scale], np.float32), np.asarray([zero], np.int64))


def calibrate(graph: Graph, inputs: Mapping[str, F32], batch: int = 256) -> dict[str, tuple[float, float]]:
    """(min, max) of every activation tensor over the calibration inputs."""
    n = len(next(iter(inputs.values())))
    ranges: dict[str, tuple[float, float]] = {}
    for start in range(0, n, batch):
        chunk = {k: v[start : start + batch] for k, v in inputs.items()}
        for name, value in evaluate(graph, chunk).items():
            lo, hi = float(value.min()), float(value.max())
            if name in ranges:
                lo, hi = min(lo, ranges[name][0]), max(hi, ranges[name][1])
            ranges[name] = (lo, hi)
    return ranges


def _params(t: Tensor) -> QuantParams:
    assert t.quant is not None, f"tensor {t.name} has no quantization parameters"
    return t.quant


def quantize_graph(
    graph: Graph,
    ranges: Mapping[str, tuple[float, float]],
    per_channel: bool = True,
    quantizer: WeightQuantizer = laq_quantizer,
) -> None:
    """Turn the float graph into an int8 graph in place (float inputs and outputs kept)."""
    for name in graph.inputs:
        t = graph.tensors[name]
        t.quant = activation_params(*ranges[name])
    for op in graph.ops:
        out = graph.tensors[op.outputs[0]]
        if op.code in _PASS_THROUGH:
            src = _params(graph.tensors[op.inputs[0]])
            out.quant = QuantParams(src.scale.copy(), src.zero_point.copy())
        elif op.code == "SOFTMAX":
            out.quant = QuantParams(
                np.asarray([_SOFTMAX_SCALE], np.float32), np.asarray([_SOFTMAX_ZERO], np.int64)
            )
        else:
            out.quant = activation_params(*ranges[out.name])
        out.dtype = "int8"
        if op.code in ("FULLY_CONNECTED", "CONV_2D"):
            _quantize_dense(graph, op, per_channel, quantizer)
        elif op.code in ("ADD", "MUL"):
            for name in op.inputs:
                t = graph.tensors[name]
                if t.data is not None:
                    t.quant = activation_params(float(t.data.min()), float(t.data.max()))
                    t.data = _to_int8(t.data, t.quant)
                    t.dtype = "int8"
    _wrap_io(graph)


def _to_int8(x: NDArray[Any], q: QuantParams) -> I8:
    v = np.rint(x.astype(np.float64) / float(q.scale[0])) + float(q.zero_point[0])
    return np.clip(v, -128, 127).astype(np.int8)


def _quantize_dense(graph: Graph, op: Op, per_channel: bool, quantizer: WeightQuantizer) -> None:
    x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
    assert w.data is not None, f"{op.code} weight {w.name} is not a constant"
    codes, scales = quantize_weights(w.data, per_channel, quantizer)
    w.data, w.dtype = codes, "int8"
    w.quant = QuantParams(scales, np.zeros(scales.shape, np.int64), axis=0)
    if len(op.inputs) > 2 and op.inputs[2]:
        b = graph.tensors[op.inputs[2]]
        assert b.data is not None
        in_scale = float(_params(x).scale[0])
        b_scales = (in_scale * scales.astype(np.float64)).astype(np.float32)
        q = np.rint(b.data.astype(np.float64) / b_scales.astype(np.float64))
        b.data = np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
        b.dtype = "int32"
        b.quant = QuantParams(b_scales, np.zeros(b_scales.shape, np.int64), axis=0)


def _wrap_io(graph: Graph) -> None:
    """Float graph inputs and outputs around the int8 body."""
    for i, name in enumerate(graph.inputs):
        t = graph.tensors[name]
        inner = graph.add_tensor(Tensor(graph.unique(f"{name}/int8"), t.shape, "int8", None, t.quant))
        for op in graph.ops:
            op.inputs = [inner if n == name else n for n in op.inputs]
        graph.ops.insert(i, Op("QUANTIZE", [name], [inner]))
        t.quant = None
    for name in graph.outputs:
        t = graph.tensors.pop(name)
        inner = graph.unique(f"{name}/int8")
        t.name = inner
        graph.tensors[inner] = t
        for op in graph.ops:
            op.inputs = [inner if n == name else n for n in op.inputs]
            op.outputs = [inner if n == name else n for n in op.outputs]
        graph.add_tensor(Tensor(name, t.shape))
        graph.ops.append(Op("DEQUANTIZE", [inner], [name]))
