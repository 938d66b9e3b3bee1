"""Tensors on the wire: msgpack ``bin`` with dtype and shape beside it, decoded without copies.

A tensor travels as ``{"dtype": "float32", "shape": [3, 4], "data": <bin>}``; the data is the C-order
little-endian bytes. Decoding is ``numpy.frombuffer`` over the received bytes (a read-only view, no
copy); nothing is ever unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.wire.errors import Reason, WireError

# Only plain numeric dtypes; object, void and string dtypes would be a door to pickle-like trouble.
DTYPES: frozenset[str] = frozenset(
    {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64"}
)
MAX_NDIM = 8
MAX_NAME_LEN = 256

TensorDict = dict[str, npt.NDArray[Any]]


def tensor_to_wire(arr: npt.NDArray[Any]) -> dict[str, Any]:
    a = np.asarray(arr)
    name = a.dtype.name
    if name not in DTYPES:
        raise TypeError(f"dtype {a.dtype} cannot travel on the wire (allowed: {sorted(DTYPES)})")
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": name, "shape": list(a.shape), "data": np.ascontiguousarray(le).tobytes()}


def tensor_from_wire(d: Any, where: str = "tensor") -> npt.NDArray[Any]:
    """Validate and view one wire tensor. Raises WireError naming what was wrong."""
    if not isinstance(d, Mapping):
        raise WireError(Reason.SCHEMA, f"{where}: expected a map, got {type(d).__name__}")
    dtype = d.get("dtype")
    shape = d.get("shape")
    data = d.get("data")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(Reason.BAD_DTYPE, f"{where}: dtype {dtype!r} not one of {sorted(DTYPES)}")
    if not isinstance(shape, list) or len(shape) > MAX_NDIM:
        raise WireError(Reason.BAD_SHAPE, f"{where}: shape must be a list of at most {MAX_NDIM} ints")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise WireError(Reason.BAD_SHAPE, f"{where}: shape {shape!r} has a non-integer or negative entry")
    if not isinstance(data, bytes):
        raise WireError(Reason.SCHEMA, f"{where}: data must be bin, got {type(data).__name__}")
    dt = np.dtype(dtype).newbyteorder("<")
    want = math.prod(shape) * dt.itemsize
    if len(data) != want:
        raise WireError(
            Reason.BAD_SHAPE, f"{where}: {len(data)} data bytes, shape {shape} {dtype} needs {want}"
        )
    return np.frombuffer(data, dtype=dt).reshape(shape)


def tensors_to_wire(tensors: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
    return {name: tensor_to_wire(a) for name, a in tensors.items()}


def tensors_from_wire(d: Any, where: str = "tensors") -> TensorDict:
    if not isinstance(d, Mapping):
        raise WireError(Reason.SCHEMA, f"{where}: expected a map of name -> tensor")
    out: TensorDict = {}
    for name, t in d.items():
        if not isinstance(name, str) or not name or len(name) > MAX_NAME_LEN:
            raise WireError(Reason.SCHEMA, f"{where}: tensor names must be non-empty strings")
        out[name] = tensor_from_wire(t, f"{where}[{name!r}]")
    return out


def check_against_model(
    tensors: Mapping[str, npt.NDArray[Any]],
    model: Mapping[str, tuple[tuple[int, ...], str]],
    *,
    require_all: bool = True,
) -> None:
    """Refuse tensors whose names, dtypes or shapes do not match the model, or that are not finite.

    ``model`` maps name -> (shape, dtype name). Partial updates (some tensors only) pass with
    ``require_all=False``.
    """
    for name, a in tensors.items():
        spec = model.get(name)
        if spec is None:
            raise WireError(Reason.UNKNOWN_TENSOR, f"tensor {name!r} is not in the model")
        shape, dtype = spec
        if a.dtype.name != dtype:
            raise WireError(Reason.BAD_DTYPE, f"tensor {name!r} is {a.dtype.name}, the model has {dtype}")
        if tuple(a.shape) != tuple(shape):
            raise WireError(
                Reason.BAD_SHAPE, f"tensor {name!r} has shape {tuple(a.shape)}, the model has {shape}"
            )
        # A float64 sum is finite exactly when every value is (float32 values cannot overflow it),
        # and costs one pass with no temporary array.
        if a.dtype.kind == "f" and not math.isfinite(float(np.add.reduce(a, axis=None, dtype=np.float64))):
            raise WireError(Reason.NON_FINITE, f"tensor {name!r} holds NaN or Inf")
    if require_all:
        missing = sorted(set(model) - set(tensors))
        if missing:
            raise WireError(Reason.MISSING_TENSOR, f"tensors missing: {missing[:5]}")
