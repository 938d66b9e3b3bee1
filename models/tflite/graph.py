"""The exporter's intermediate graph: TFLite-level operators over named tensors.

The ONNX lowering produces it in float32; quantization annotates it in place; the flatbuffer
writer serialises it. Keeping this step separate lets the calibration run the exact float graph
that is written (with NHWC layouts and inserted transposes) rather than the ONNX original.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

# A dimension is a fixed size or None (dynamic: the batch). TFLite writes None as 1 in `shape`
# and as -1 in `shape_signature`.
Shape = tuple[int | None, ...]


class UnsupportedOpError(ValueError):
    """The ONNX graph uses an operator (or an attribute of one) the exporter cannot lower."""


@dataclass
class QuantParams:
    """Affine quantization real = scale * (q - zero_point), per tensor or per channel (`axis`)."""

    scale: NDArray[np.float32]
    zero_point: NDArray[np.int64]
    axis: int = 0


@dataclass
class Tensor:
    name: str
    shape: Shape
    dtype: str = "float32"  # float32 | int8 | int32
    data: NDArray[Any] | None = None  # constants only
    quant: QuantParams | None = None


@dataclass
class Op:
    code: str  # TFLite builtin operator name, e.g. "FULLY_CONNECTED"
    inputs: list[str]  # "" marks an absent optional input (written as -1)
    outputs: list[str]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    tensors: dict[str, Tensor] = field(default_factory=dict)
    ops: list[Op] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def add_tensor(self, tensor: Tensor) -> str:
        if tensor.name in self.tensors:
            raise AssertionError(f"tensor {tensor.name!r} defined twice")
        self.tensors[tensor.name] = tensor
        return tensor.name

    def unique(self, base: str) -> str:
        """A tensor name not used yet, derived from `base`."""
        if base not in self.tensors:
            return base
        i = 1
        while f"{base}_{i}" in self.tensors:
            i += 1
        return f"{base}_{i}"

    def const(self, base: str, data: NDArray[Any]) -> str:
        dtype = str(data.dtype)
        return self.add_tensor(Tensor(self.unique(base), tuple(int(d) for d in data.shape), dtype, data))

    def activation(self, base: str, shape: Shape) -> str:
        return self.add_tensor(Tensor(self.unique(base), shape))
