"""Serialise the exporter graph to a .tflite flatbuffer, using the `tflite` package's schema classes.

What the TFLite runtimes insist on, and the builder does not do by itself:
- buffer 0 is the empty sentinel; every constant gets its own buffer, activations point at 0;
- buffer data starts on a 16-byte boundary of the file (kernels read weights in place, and
  XNNPACK and NEON loads assume alignment);
- an operator code carries both `deprecated_builtin_code` (int8, capped at 127) and `builtin_code`;
- the file identifier is ``TFL3`` and the schema version 3;
- a dynamic dimension is written as 1 in `shape` and -1 in `shape_signature`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orbitfl.models.tflite.graph import Graph, Op, Tensor

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16
_PLACEHOLDER_FOR_GREATER_OP_CODES = 127

# Operator versions as the TensorFlow converter assigns them for int8 kernels (float: 1). The
# runtimes check a model's version against the range their kernel registers, so these stay at
# the lowest version that has the int8 kernel.
_INT8_VERSIONS = {
    "FULLY_CONNECTED": 4,
    "CONV_2D": 3,
    "MAX_POOL_2D": 2,
    "SOFTMAX": 2,
    "ADD": 2,
    "TRANSPOSE": 2,
    "RELU": 2,
    "PAD": 2,
    "QUANTIZE": 2,
    "DEQUANTIZE": 2,
    "RESHAPE": 1,
    "MUL": 2,
    "SLICE": 2,
}


def _tensor_type(tfl: Any, dtype: str) -> int:
    types = {"float32": tfl.TensorType.FLOAT32, "int8": tfl.TensorType.INT8, "int32": tfl.TensorType.INT32}
    return int(types[dtype])


def _activation(tfl: Any, name: str) -> int:
    return int({"NONE": tfl.ActivationFunctionType.NONE, "RELU": tfl.ActivationFunctionType.RELU}[name])


def _aligned_bytes(b: Any, data: bytes) -> int:
    """A [ubyte] vector whose first byte lands on a BUFFER_ALIGNMENT boundary of the file."""
    b.StartVector(1, len(data), BUFFER_ALIGNMENT)
    b.head -= len(data)
    b.Bytes[b.head : b.head + len(data)] = data
    return int(b.EndVector())


def _op_version(op: Op, graph: Graph) -> int:
    types = {graph.tensors[n].dtype for n in op.inputs + op.outputs if n}
    return _INT8_VERSIONS.get(op.code, 1) if "int8" in types else 1


def _options(b: Any, tfl: Any, op: Op) -> tuple[int, int]:
    """(BuiltinOptions type, table offset) for `op`; (NONE, 0) when it has none."""
    o = op.options
    if op.code == "FULLY_CONNECTED":
        tfl.FullyConnectedOptionsStart(b)
        tfl.FullyConnectedOptionsAddFusedActivationFunction(b, _activation(tfl, o["activation"]))
        return tfl.BuiltinOptions.FullyConnectedOptions, tfl.FullyConnectedOptionsEnd(b)
    if op.code == "CONV_2D":
        tfl.Conv2DOptionsStart(b)
        tfl.Conv2DOptionsAddPadding(b, getattr(tfl.Padding, o["padding"]))
        tfl.Conv2DOptionsAddStrideH(b, o["stride_h"])
        tfl.Conv2DOptionsAddStrideW(b, o["stride_w"])
        tfl.Conv2DOptionsAddDilationHFactor(b, o["dilation_h"])
        tfl.Conv2DOptionsAddDilationWFactor(b, o["dilation_w"])
        tfl.Conv2DOptionsAddFusedActivationFunction(b, _activation(tfl, o["activation"]))
        return tfl.BuiltinOptions.Conv2DOptions, tfl.Conv2DOptionsEnd(b)
    if op.code == "MAX_POOL_2D":
        tfl.Pool2DOptionsStart(b)
        tfl.Pool2DOptionsAddPadding(b, getattr(tfl.Padding, o["padding"]))
        tfl.Pool2DOptionsAddStrideH(b, o["stride_h"])
        tfl.Pool2DOptionsAddStrideW(b, o["stride_w"])
        tfl.Pool2DOptionsAddFilterHeight(b, o["filter_h"])
        tfl.Pool2DOptionsAddFilterWidth(b, o["filter_w"])
        tfl.Pool2DOptionsAddFusedActivationFunction(b, _activation(tfl, o["activation"]))
        return tfl.BuiltinOptions.Pool2DOptions, tfl.Pool2DOptionsEnd(b)
    if op.code == "RESHAPE":
        new_shape = b.CreateNumpyVector(np.asarray(o["new_shape"], dtype=np.int32))
        tfl.ReshapeOptionsStart(b)
        tfl.ReshapeOptionsAddNewShape(b, new_shape)
        return tfl.BuiltinOptions.ReshapeOptions, tfl.ReshapeOptionsEnd(b)
    if op.code == "SOFTMAX":
        tfl.SoftmaxOptionsStart(b)
        tfl.SoftmaxOptionsAddBeta(b, float(o["beta"]))
        return tfl.BuiltinOptions.SoftmaxOptions, tfl.SoftmaxOptionsEnd(b)
    if op.code == "ADD":
        tfl.AddOptionsStart(b)
        tfl.AddOptionsAddFusedActivationFunction(b, _activation(tfl, o["activation"]))
        return tfl.BuiltinOptions.AddOptions, tfl.AddOptionsEnd(b)
    if op.code == "MUL":
        tfl.MulOptionsStart(b)
        tfl.MulOptionsAddFusedActivationFunction(b, _activation(tfl, o["activation"]))
        return tfl.BuiltinOptions.MulOptions, tfl.MulOptionsEnd(b)
    empty = {
        "TRANSPOSE": ("TransposeOptions", tfl.TransposeOptionsStart, tfl.TransposeOptionsEnd),
        "PAD": ("PadOptions", tfl.PadOptionsStart, tfl.PadOptionsEnd),
        "SLICE": ("SliceOptions", tfl.SliceOptionsStart, tfl.SliceOptionsEnd),
        "QUANTIZE": ("QuantizeOptions", tfl.QuantizeOptionsStart, tfl.QuantizeOptionsEnd),
        "DEQUANTIZE": ("DequantizeOptions", tfl.DequantizeOptionsStart, tfl.DequantizeOptionsEnd),
    }
    if op.code in empty:
        kind, start, end = empty[op.code]
        start(b)
        return getattr(tfl.BuiltinOptions, kind), end(b)
    if op.code == "RELU":
        return tfl.BuiltinOptions.NONE, 0
    raise AssertionError(f"no options writer for {op.code}")


def _quantization(b: Any, tfl: Any, t: Tensor) -> int:
    assert t.quant is not None
    scale = b.CreateNumpyVector(np.asarray(t.quant.scale, dtype=np.float32).reshape(-1))
    zero = b.CreateNumpyVector(np.asarray(t.quant.zero_point, dtype=np.int64).reshape(-1))
    tfl.QuantizationParametersStart(b)
    tfl.QuantizationParametersAddScale(b, scale)
    tfl.QuantizationParametersAddZeroPoint(b, zero)
    tfl.QuantizationParametersAddQuantizedDimension(b, int(t.quant.axis))
    return int(tfl.QuantizationParametersEnd(b))


def serialize(graph: Graph, description: str = "orbitfl export") -> bytes:
    """The .tflite bytes of `graph` (one subgraph)."""
    try:
        import flatbuffers
        import tflite as tfl
    except ImportError as exc:
        raise ImportError(
            f"writing .tflite files needs flatbuffers and the tflite schema package ({exc.name} is "
            "missing): pip install 'orbitfl[litert]'"
        ) from None

    b = flatbuffers.Builder(1024)
    names = list(graph.tensors)
    index = {name: i for i, name in enumerate(names)}

    # Constants first: their data dominates the file and is placed (back to front) at its end.
    buffer_of: dict[str, int] = {}
    data_vectors: list[int] = []
    for name in names:
        t = graph.tensors[name]
        if t.data is not None:
            raw = np.ascontiguousarray(t.data).astype(t.data.dtype.newbyteorder("<"), copy=False).tobytes()
            data_vectors.append(_aligned_bytes(b, raw))
            buffer_of[name] = len(data_vectors)  # buffer 0 stays the empty sentinel
    buffers = []
    tfl.BufferStart(b)
    buffers.append(tfl.BufferEnd(b))
    for vec in data_vectors:
        tfl.BufferStart(b)
        tfl.BufferAddData(b, vec)
        buffers.append(tfl.BufferEnd(b))

    tensors = []
    for name in names:
        t = graph.tensors[name]
        name_off = b.CreateString(name)
        shape = b.CreateNumpyVector(np.asarray([1 if d is None else d for d in t.shape], dtype=np.int32))
        signature = (
            b.CreateNumpyVector(np.asarray([-1 if d is None else d for d in t.shape], dtype=np.int32))
            if any(d is None for d in t.shape)
            else None
        )
        quant = _quantization(b, tfl, t) if t.quant is not None else None
        tfl.TensorStart(b)
        tfl.TensorAddShape(b, shape)
        if signature is not None:
            tfl.TensorAddShapeSignature(b, signature)
        tfl.TensorAddType(b, _tensor_type(tfl, t.dtype))
        tfl.TensorAddBuffer(b, buffer_of.get(name, 0))
        tfl.TensorAddName(b, name_off)
        if quant is not None:
            tfl.TensorAddQuantization(b, quant)
        tensors.append(tfl.TensorEnd(b))

    opcodes: dict[tuple[int, int], int] = {}
    operators = []
    for op in graph.ops:
        code = getattr(tfl.BuiltinOperator, op.code)
        key = (code, _op_version(op, graph))
        opcodes.setdefault(key, len(opcodes))
        inputs = b.CreateNumpyVector(np.asarray([index[n] if n else -1 for n in op.inputs], dtype=np.int32))
        outputs = b.CreateNumpyVector(np.asarray([index[n] for n in op.outputs], dtype=np.int32))
        opt_type, opt = _options(b, tfl, op)
        tfl.OperatorStart(b)
        tfl.OperatorAddOpcodeIndex(b, opcodes[key])
        tfl.OperatorAddInputs(b, inputs)
        tfl.OperatorAddOutputs(b, outputs)
        if opt:
            tfl.OperatorAddBuiltinOptionsType(b, opt_type)
            tfl.OperatorAddBuiltinOptions(b, opt)
        operators.append(tfl.OperatorEnd(b))

    codes = []
    for code, version in opcodes:
        tfl.OperatorCodeStart(b)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, _PLACEHOLDER_FOR_GREATER_OP_CODES))
        tfl.OperatorCodeAddBuiltinCode(b, code)
        tfl.OperatorCodeAddVersion(b, version)
        codes.append(tfl.OperatorCodeEnd(b))

    def vector(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for off in reversed(items):
            b.PrependUOffsetTRelative(off)
        return int(b.EndVector())

    tensors_v = vector(tensors)
    operators_v = vector(operators)
    sg_inputs = b.CreateNumpyVector(np.asarray([index[n] for n in graph.inputs], dtype=np.int32))
    sg_outputs = b.CreateNumpyVector(np.asarray([index[n] for n in graph.outputs], dtype=np.int32))
    sg_name = b.CreateString("main")
    tfl.SubGraphStart(b)
    tfl.SubGraphAddTensors(b, tensors_v)
    tfl.SubGraphAddInputs(b, sg_inputs)
    tfl.SubGraphAddOutputs(b, sg_outputs)
    tfl.SubGraphAddOperators(b, operators_v)
    tfl.SubGraphAddName(b, sg_name)
    subgraph = tfl.SubGraphEnd(b)

    codes_v = vector(codes)
    subgraphs_v = vector([subgraph])
    buffers_v = vector(buffers)
    desc = b.CreateString(description)
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, SCHEMA_VERSION)
    tfl.ModelAddOperatorCodes(b, codes_v)
    tfl.ModelAddSubgraphs(b, subgraphs_v)
    tfl.ModelAddDescription(b, desc)
    tfl.ModelAddBuffers(b, buffers_v)
    model = tfl.ModelEnd(b)
    b.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())
