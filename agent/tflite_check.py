"""Structural check of a .tflite flatbuffer before a runtime sees it.

LiteRT verifies the flatbuffer itself, but tflite-runtime 2.14 does not: a damaged file (random
bytes after a valid header) makes it dereference wild offsets and the process dies with SIGSEGV —
on a board, the whole agent. This walks every table, vector and string the interpreter reads
(schema version 3) with bounds checks, and the indices it follows (operator codes, tensors,
buffers), so a damaged file becomes an error message instead.

Stdlib only (struct), so a board needs nothing beyond the runtime.
"""

from __future__ import annotations

import struct

IDENTIFIER = b"TFL3"

# table -> {field id: (kind, scalar/element size in bytes or sub-table name)}; field ids follow
# the schema's declaration order. Kinds: scalar, vector, string, table, union, vector_of_tables.
TABLE, STRING, UNION = "table", "string", "union"
_SCHEMA: dict[str, dict[int, tuple[str, object]]] = {
    "Model": {
        0: ("scalar", 4),
        1: ("vector_of_tables", "OperatorCode"),
        2: ("vector_of_tables", "SubGraph"),
        3: (STRING, None),
        4: ("vector_of_tables", "Buffer"),
        5: ("vector", 4),
        6: ("vector_of_tables", "Metadata"),
        7: ("vector_of_tables", "SignatureDef"),
    },
    "OperatorCode": {0: ("scalar", 1), 1: (STRING, None), 2: ("scalar", 4), 3: ("scalar", 4)},
    "SubGraph": {
        0: ("vector_of_tables", "Tensor"),
        1: ("vector", 4),
        2: ("vector", 4),
        3: ("vector_of_tables", "Operator"),
        4: (STRING, None),
        5: ("scalar", 4),
    },
    "Tensor": {
        0: ("vector", 4),
        1: ("scalar", 1),
        2: ("scalar", 4),
        3: (STRING, None),
        4: (TABLE, "QuantizationParameters"),
        5: ("scalar", 1),
        6: (TABLE, None),
        7: ("vector", 4),
        8: ("scalar", 1),
        9: ("vector_of_tables", None),
    },
    "QuantizationParameters": {
        0: ("vector", 4),
        1: ("vector", 4),
        2: ("vector", 4),
        3: ("vector", 8),
        4: ("scalar", 1),
        5: (UNION, None),
        6: ("scalar", 4),
    },
    "Operator": {
        0: ("scalar", 4),
        1: ("vector", 4),
        2: ("vector", 4),
        3: ("scalar", 1),
        4: (UNION, "options"),
        5: ("vector", 1),
        6: ("scalar", 1),
        7: ("vector", 1),
        8: ("vector", 4),
        9: ("scalar", 8),
        10: ("scalar", 8),
        11: ("scalar", 1),
        12: (UNION, None),
        13: ("scalar", 4),
    },
    "Buffer": {0: ("vector", 1), 1: ("scalar", 8), 2: ("scalar", 8)},
    "Metadata": {0: (STRING, None), 1: ("scalar", 4)},
    "SignatureDef": {
        0: ("vector_of_tables", "TensorMap"),
        1: ("vector_of_tables", "TensorMap"),
        2: (STRING, None),
        4: ("scalar", 4),
    },
    "TensorMap": {0: (STRING, None), 1: ("scalar", 4)},
    "ReshapeOptions": {0: ("vector", 4)},
}
_RESHAPE_OPTIONS = 17  # BuiltinOptions.ReshapeOptions: the one options table holding a vector


class TFLiteFormatError(ValueError):
    """The bytes are not a well-formed TFLite flatbuffer."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)

    def need(self, pos: int, size: int, what: str) -> None:
        if pos < 0 or pos + size > self.n:
            raise TFLiteFormatError(f"{what} at byte {pos} runs past the end of the file ({self.n} bytes)")

    def u8(self, pos: int) -> int:
        self.need(pos, 1, "value")
        return self.data[pos]

    def u16(self, pos: int) -> int:
        self.need(pos, 2, "value")
        return int(struct.unpack_from("<H", self.data, pos)[0])

    def u32(self, pos: int) -> int:
        self.need(pos, 4, "value")
        return int(struct.unpack_from("<I", self.data, pos)[0])

    def i32(self, pos: int) -> int:
        self.need(pos, 4, "value")
        return int(struct.unpack_from("<i", self.data, pos)[0])

    def u64(self, pos: int) -> int:
        self.need(pos, 8, "value")
        return int(struct.unpack_from("<Q", self.data, pos)[0])

    def deref(self, pos: int, what: str) -> int:
        """Follow the uoffset stored at `pos`."""
        target = pos + self.u32(pos)
        self.need(target, 4, what)
        return target

    def table(self, pos: int, name: str) -> dict[int, int]:
        """Check the table at `pos` and its vtable; returns field id -> absolute field position."""
        if pos % 4:
            raise TFLiteFormatError(f"{name} table at byte {pos} is misaligned")
        vtable = pos - self.i32(pos)
        vsize, tsize = self.u16(vtable), self.u16(vtable + 2)
        if vsize < 4 or vsize % 2 or vtable % 2:
            raise TFLiteFormatError(f"{name} table at byte {pos} has a malformed vtable")
        self.need(vtable, vsize, f"{name} vtable")
        self.need(pos, max(tsize, 4), f"{name} table")
        fields = {}
        for i in range((vsize - 4) // 2):
            off = self.u16(vtable + 4 + 2 * i)
            if off:
                if off >= tsize:
                    raise TFLiteFormatError(f"{name} field {i} lies outside its table")
                fields[i] = pos + off
        return fields

    def vector(self, pos: int, elem: int, what: str) -> tuple[int, int]:
        """(number of elements, position of the first) of the vector whose offset is at `pos`."""
        start = self.deref(pos, what)
        count = self.u32(start)
        self.need(start + 4, count * elem, what)
        return count, start + 4


def _walk(r: _Reader, pos: int, name: str) -> None:
    """Check table `name` at `pos` and everything below it ("?" = a table of unknown layout:
    only its vtable and field positions are checked)."""
    fields = r.table(pos, name)
    schema = _SCHEMA.get(name, {})
    for fid, fpos in fields.items():
        kind, arg = schema.get(fid, ("scalar", 1))
        what = f"{name} field {fid}"
        if kind == "scalar":
            r.need(fpos, arg if isinstance(arg, int) else 1, what)
        elif kind == "vector":
            r.vector(fpos, arg if isinstance(arg, int) else 1, what)
        elif kind == STRING:
            count, start = r.vector(fpos, 1, what)
            if r.u8(start + count) != 0:
                raise TFLiteFormatError(f"{what} is a string without its terminating zero")
        elif kind == TABLE:
            _walk(r, r.deref(fpos, what), arg if isinstance(arg, str) else "?")
        elif kind == UNION:
            type_pos = fields.get(fid - 1)  # a union's type field comes just before its value
            reshape = arg == "options" and type_pos is not None and r.u8(type_pos) == _RESHAPE_OPTIONS
            _walk(r, r.deref(fpos, what), "ReshapeOptions" if reshape else "?")
        else:  # vector of tables
            count, start = r.vector(fpos, 4, what)
            for i in range(count):
                _walk(r, r.deref(start + 4 * i, what), arg if isinstance(arg, str) else "?")


def _ints(r: _Reader, fields: dict[int, int], fid: int) -> list[int]:
    if fid not in fields:
        return []
    count, start = r.vector(fields[fid], 4, "index vector")
    return [r.i32(start + 4 * i) for i in range(count)]


def check_tflite(data: bytes) -> None:
    """Raise TFLiteFormatError unless `data` is a structurally sound TFLite model."""
    r = _Reader(data)
    if r.n < 8 or data[4:8] != IDENTIFIER:
        raise TFLiteFormatError(f"no {IDENTIFIER.decode()} file identifier at byte 4")
    root = r.deref(0, "root table")
    _walk(r, root, "Model")
    model = r.table(root, "Model")
    for fid, what in ((1, "operator codes"), (2, "subgraphs"), (4, "buffers")):
        if fid not in model:
            raise TFLiteFormatError(f"the model has no {what}")
    n_codes, _ = r.vector(model[1], 4, "operator codes")
    n_buffers, buffers_at = r.vector(model[4], 4, "buffers")
    n_subgraphs, subgraphs_at = r.vector(model[2], 4, "subgraphs")
    if n_subgraphs == 0:
        raise TFLiteFormatError("the model has no subgraph")
    for b in range(n_buffers):
        buf = r.table(r.deref(buffers_at + 4 * b, "buffer"), "Buffer")
        if 1 in buf and 2 in buf:  # data stored after the flatbuffer (models > 2 GB)
            offset, size = r.u64(buf[1]), r.u64(buf[2])
            if offset > 1 and offset + size > r.n:
                raise TFLiteFormatError(f"buffer {b} points past the end of the file")
    for s in range(n_subgraphs):
        sg = r.table(r.deref(subgraphs_at + 4 * s, "subgraph"), "SubGraph")
        n_tensors, tensors_at = r.vector(sg[0], 4, "tensors") if 0 in sg else (0, 0)
        for t in range(n_tensors):
            tensor = r.table(r.deref(tensors_at + 4 * t, "tensor"), "Tensor")
            buffer = r.u32(tensor[2]) if 2 in tensor else 0
            if buffer >= n_buffers:
                raise TFLiteFormatError(f"subgraph {s} tensor {t} refers to buffer {buffer} of {n_buffers}")
        for idx in _ints(r, sg, 1) + _ints(r, sg, 2):
            if not 0 <= idx < n_tensors:
                raise TFLiteFormatError(f"subgraph {s} input/output {idx} is not one of {n_tensors} tensors")
        n_ops, ops_at = r.vector(sg[3], 4, "operators") if 3 in sg else (0, 0)
        for o in range(n_ops):
            op = r.table(r.deref(ops_at + 4 * o, "operator"), "Operator")
            code = r.u32(op[0]) if 0 in op else 0
            if code >= n_codes:
                raise TFLiteFormatError(f"subgraph {s} operator {o} uses operator code {code} of {n_codes}")
            for idx in _ints(r, op, 1) + _ints(r, op, 2) + _ints(r, op, 8):
                if not -1 <= idx < n_tensors:
                    raise TFLiteFormatError(f"subgraph {s} operator {o} uses tensor {idx} of {n_tensors}")
