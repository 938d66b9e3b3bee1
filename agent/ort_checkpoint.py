"""Read the optimizer state out of an ONNX Runtime training checkpoint.

ORT's Python API exposes parameters and their gradients but not the optimizer's moments. A
checkpoint saved with ``include_optimizer_state=True`` holds them, in the flatbuffer format of
``onnxruntime/core/flatbuffers/schema/ort_training_checkpoint.fbs`` (file identifier ``ODTC``):

    Checkpoint { version:int; module_state:ModuleState; optimizer_groups:[OptimizerGroup]; ... }
    OptimizerGroup { group_name:string; step:long; initial_learning_rate:float;
                     optimizer_states:[ParameterOptimizerState] }
    ParameterOptimizerState { param_name:string; momentums:[Tensor] }
    Tensor { name:string; doc_string:string; dims:[long]; data_type:int; raw_data:[ubyte]; ... }

For AdamW the momentums are ``momentum0`` (first moment m) and ``momentum1`` (second moment v).
This reader walks those few tables with the ``flatbuffers`` runtime (an onnxruntime dependency)
rather than the generated classes onnxruntime ships, which import a top-level package name.
"""

from __future__ import annotations

from dataclasses import dataclass

import flatbuffers
import numpy as np
from flatbuffers.table import Table

_FLOAT = 1  # onnxruntime.fbs.TensorDataType.FLOAT


@dataclass(frozen=True)
class OptimizerState:
    step: int
    momentums: dict[str, dict[str, np.ndarray]]  # parameter -> {"momentum0": m, "momentum1": v}


def _field(t: Table, slot: int) -> int:
    return int(t.Offset(4 + 2 * slot))


def _table(t: Table, slot: int) -> Table | None:
    o = _field(t, slot)
    return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None


def _tables(t: Table, slot: int) -> list[Table]:
    o = _field(t, slot)
    if not o:
        return []
    start = t.Vector(o)
    return [Table(t.Bytes, t.Indirect(start + 4 * j)) for j in range(t.VectorLen(o))]


def _string(t: Table, slot: int) -> str:
    o = _field(t, slot)
    return bytes(t.String(o + t.Pos)).decode() if o else ""


def _tensor(t: Table) -> tuple[str, np.ndarray]:
    name = _string(t, 0)
    o = _field(t, 2)
    dims = tuple(int(v) for v in np.frombuffer(t.Bytes, "<i8", t.VectorLen(o), t.Vector(o))) if o else ()
    o = _field(t, 3)
    dtype = t.Get(flatbuffers.number_types.Int32Flags, o + t.Pos) if o else 0
    if dtype != _FLOAT:
        raise ValueError(f"optimizer state tensor {name!r} has data type {dtype}, expected float")
    o = _field(t, 4)
    raw = bytes(t.Bytes[t.Vector(o) : t.Vector(o) + t.VectorLen(o)]) if o else b""
    arr = np.frombuffer(raw, "<f4").astype(np.float32)
    if arr.size != int(np.prod(dims, dtype=np.int64)):
        raise ValueError(f"optimizer state tensor {name!r}: {arr.size} values for shape {dims}")
    return name, arr.reshape(dims)


def read_optimizer_state(buf: bytes) -> OptimizerState:
    """Parse the first optimizer group of a checkpoint's bytes (orbitfl builds one group)."""
    if len(buf) < 8 or buf[4:8] != b"ODTC":
        raise ValueError("not an ONNX Runtime training checkpoint (file identifier is not ODTC)")
    data = bytearray(buf)
    root = Table(data, flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0))
    groups = _tables(root, 2)
    if not groups:
        return OptimizerState(0, {})
    group = groups[0]
    o = _field(group, 1)
    step = int(group.Get(flatbuffers.number_types.Int64Flags, o + group.Pos)) if o else 0
    out: dict[str, dict[str, np.ndarray]] = {}
    for state in _tables(group, 3):
        out[_string(state, 0)] = dict(_tensor(m) for m in _tables(state, 1))
    return OptimizerState(step, out)
