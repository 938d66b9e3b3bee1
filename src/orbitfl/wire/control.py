"""SCAFFOLD's control variates on the wire: the ground's c in TASK hints, each agent's Δcᵢ as
extra tensors of its UPDATE.

TASK hints are a free-form map whose byte strings are at most ``MAX_TEXT_LEN`` long, so c travels
as, per tensor, a list of little-endian float32 pieces of at most that size; the agent knows every
shape from the model it holds. Δcᵢ rides in the update's payload under ``PREFIX + name``, through
the task's codec like the model's delta, so its bytes are counted (and compressed) with the update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.wire.messages import MAX_TEXT_LEN

HINT = "scaffold_c"
PREFIX = "scaffold/"
_PIECE = MAX_TEXT_LEN // 4 * 4


def control_to_hint(c: Mapping[str, npt.NDArray[Any]]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for name, a in c.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        out[name] = [raw[i : i + _PIECE] for i in range(0, len(raw), _PIECE)] or [b""]
    return out


def control_from_hint(hint: Any, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, npt.NDArray[np.float32]]:
    """The ground's c from ``hints[HINT]``, shaped like ``shapes`` (the model's); ValueError naming
    what is wrong for a tensor the model lacks, a size that does not match, or a non-finite value."""
    if not isinstance(hint, Mapping):
        raise ValueError(f"hints[{HINT!r}] must map tensor names to lists of float32 bytes")
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name, pieces in hint.items():
        shape = shapes.get(name)
        if shape is None:
            raise ValueError(f"hints[{HINT!r}] names tensor {name!r}, which the model does not have")
        if not isinstance(pieces, list) or not all(isinstance(p, bytes) for p in pieces):
            raise ValueError(f"hints[{HINT!r}][{name!r}] must be a list of byte strings")
        raw = b"".join(pieces)
        size = int(np.prod(shape, dtype=np.int64))
        if len(raw) != 4 * size:
            raise ValueError(f"hints[{HINT!r}][{name!r}] holds {len(raw)} bytes, the tensor needs {4 * size}")
        a = np.frombuffer(raw, "<f4").astype(np.float32).reshape(shape)
        if not np.isfinite(a).all():
            raise ValueError(f"hints[{HINT!r}][{name!r}] holds NaN or Inf")
        out[name] = a
    return out
