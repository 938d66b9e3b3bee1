"""An encoded set of tensors, its plain-dict wire form, and the validation of untrusted input.

Wire form (plain msgpack types only; the wire module embeds it as is)::

    {"v": 1,                                  # payload format version
     "chains": ["topk:0.01+ef|quant:8|zstd"], # canonical chain texts, referenced by index
     "tensors": {name: {"c": 0,               # index into chains
                        "dtype": "float32",   # the decoded dtype
                        "shape": [256, 128],
                        "meta": [{...}, ...], # one map of scalars per float stage
                        "data": [b"...", ...] # the stages' arrays in layout order, or instead
                        "z": b"..."}}}        # their concatenation compressed by the byte stage

Each stage declares the arrays it writes and their exact lengths as a function of the tensor's size
and its metadata (:meth:`Stage.layout`), so :meth:`Payload.from_wire` checks every length before
any kernel runs and knows the exact decompressed size of a zstd frame before decompressing it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from numpy.typing import NDArray

from orbitfl.codec.recipe import MAX_RECIPE_CHARS, Chain, parse_chain
from orbitfl.codec.registry import Field, Meta

FORMAT_VERSION = 1


@dataclass(frozen=True)
class PayloadLimits:
    """Bounds on untrusted payloads. Decoding never allocates more than about ``max_bytes`` (the
    serialized size and the sum of decompressed sizes) plus 4 bytes per decoded value."""

    max_bytes: int = 256 << 20
    max_values: int = 64 << 20  # decoded float32 values across all tensors
    max_tensors: int = 4096
    max_ndim: int = 8
    max_name_chars: int = 512
    max_chains: int = 64


DEFAULT_LIMITS = PayloadLimits()


@dataclass
class TensorRecord:
    """One tensor as encoded: its chain, original shape, per-stage metadata and arrays."""

    chain: Chain
    shape: tuple[int, ...]
    meta: list[Meta]
    raw: list[bytes]  # arrays in layout order, uncompressed
    zdata: bytes | None = None  # what goes on the wire when the byte stage helped

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def layout(self) -> list[tuple[list[Field], int]]:
        """Per float stage: (its fields, its input size). ValueError for metadata that cannot fit."""
        out: list[tuple[list[Field], int]] = []
        n = self.size
        stages = self.chain.float_stages
        if len(self.meta) != len(stages):
            raise ValueError(f"meta has {len(self.meta)} entries for {len(stages)} float stages")
        for i, (stage, meta) in enumerate(zip(stages, self.meta, strict=True)):
            try:
                _check_meta(stage.meta_schema, meta)
                fields, left = stage.layout(meta, n)
            except ValueError as exc:
                raise ValueError(f"meta[{i}] ({stage.name}): {exc}") from None
            out.append((fields, n))
            n = left
        return out

    def arrays(self) -> list[list[NDArray[Any]]]:
        """The arrays of each float stage as read-only views over ``raw`` (no copies)."""
        out: list[list[NDArray[Any]]] = []
        it = iter(self.raw)
        for fields, _ in self.layout():
            stage_arrays = []
            for f in fields:
                a = np.frombuffer(next(it), dtype=f.dtype)
                if not a.flags.aligned:
                    a = a.copy()
                stage_arrays.append(a.astype(a.dtype.newbyteorder("="), copy=False))
            out.append(stage_arrays)
        return out

    @property
    def nbytes_raw(self) -> int:
        return sum(len(b) for b in self.raw)

    def __repr__(self) -> str:  # never dump megabytes of array bytes into a log line
        stored = len(self.zdata) if self.zdata is not None else self.nbytes_raw
        return f"TensorRecord({self.chain.text!r}, shape={self.shape}, {stored} B)"

    def to_wire(self, chain_index: int) -> dict[str, Any]:
        d: dict[str, Any] = {
            "c": chain_index,
            "dtype": "float32",
            "shape": list(self.shape),
            "meta": self.meta,
        }
        if self.zdata is not None:
            d["z"] = self.zdata
        else:
            d["data"] = self.raw
        return d


@dataclass
class Payload:
    """Encoded tensors, name -> record, in the order they were given."""

    records: dict[str, TensorRecord]
    _nbytes: int | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        return f"Payload({len(self.records)} tensors, {self.n_values} values, {self.nbytes} B)"

    @property
    def names(self) -> list[str]:
        return list(self.records)

    @property
    def n_values(self) -> int:
        return sum(r.size for r in self.records.values())

    @property
    def nbytes(self) -> int:
        """Size of the serialized payload (``to_bytes()``), the bytes it costs on the link."""
        if self._nbytes is None:
            self._nbytes = len(self.to_bytes())
        return self._nbytes

    def to_wire(self) -> dict[str, Any]:
        chains: dict[str, int] = {}
        tensors: dict[str, Any] = {}
        for name, rec in self.records.items():
            idx = chains.setdefault(rec.chain.text, len(chains))
            tensors[name] = rec.to_wire(idx)
        return {"v": FORMAT_VERSION, "chains": list(chains), "tensors": tensors}

    def to_bytes(self) -> bytes:
        out: bytes = msgpack.packb(self.to_wire(), use_bin_type=True)
        return out

    @classmethod
    def from_bytes(cls, data: bytes, *, limits: PayloadLimits = DEFAULT_LIMITS) -> Payload:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"payload must be bytes, got {type(data).__name__}")
        if len(data) > limits.max_bytes:
            raise ValueError(f"payload is {len(data)} bytes; the limit is {limits.max_bytes}")
        try:
            d = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_bin_len=limits.max_bytes,
                max_str_len=max(limits.max_name_chars, 4096),
                max_array_len=max(limits.max_tensors, 1024),
                max_map_len=limits.max_tensors + 16,
                max_ext_len=0,
            )
        except (ValueError, msgpack.UnpackException, msgpack.ExtraData, TypeError) as exc:
            raise ValueError(f"payload is not valid msgpack ({type(exc).__name__}: {exc})") from None
        payload = cls.from_wire(d, limits=limits)
        payload._nbytes = len(data)
        return payload

    @classmethod
    def from_wire(
        cls,
        d: Any,
        *,
        limits: PayloadLimits = DEFAULT_LIMITS,
        expect: Mapping[str, tuple[int, ...]] | None = None,
    ) -> Payload:
        """Validate an untrusted wire dict; ValueError naming the offending field.

        ``expect`` (name -> shape), if given, must list every tensor sent, with its shape.
        """
        if not isinstance(d, dict):
            raise ValueError(f"payload must be a map, got {type(d).__name__}")
        extra = set(d) - {"v", "chains", "tensors"}
        if extra:
            raise ValueError(f"payload has unknown keys {sorted(map(str, extra))}")
        if d.get("v") != FORMAT_VERSION:
            raise ValueError(f"payload.v is {d.get('v')!r}; this build reads version {FORMAT_VERSION}")
        chains_in = d.get("chains")
        if not isinstance(chains_in, list | tuple) or len(chains_in) > limits.max_chains:
            raise ValueError(f"payload.chains must be a list of at most {limits.max_chains} strings")
        chains: list[Chain] = []
        for i, text in enumerate(chains_in):
            if not isinstance(text, str) or len(text) > MAX_RECIPE_CHARS:
                raise ValueError(f"payload.chains[{i}] must be a string of at most {MAX_RECIPE_CHARS} chars")
            try:
                chains.append(parse_chain(text))
            except ValueError as exc:
                raise ValueError(f"payload.chains[{i}]: {exc}") from None
        tensors = d.get("tensors")
        if not isinstance(tensors, dict):
            raise ValueError("payload.tensors must be a map")
        if len(tensors) > limits.max_tensors:
            raise ValueError(f"payload.tensors has {len(tensors)} entries; the limit is {limits.max_tensors}")
        records: dict[str, TensorRecord] = {}
        budget = _Budget(limits)
        for name, t in tensors.items():
            where = f"payload.tensors[{name!r}]"
            if not isinstance(name, str) or not 0 < len(name) <= limits.max_name_chars:
                raise ValueError(
                    f"{where}: a tensor name must be a string of 1..{limits.max_name_chars} chars"
                )
            if expect is not None and name not in expect:
                raise ValueError(f"{where}: no such tensor in the model")
            records[name] = _record_from_wire(t, where, chains, limits, budget)
            if expect is not None and tuple(expect[name]) != records[name].shape:
                raise ValueError(
                    f"{where}.shape: {list(records[name].shape)} but the model has {list(expect[name])}"
                )
        return cls(records)


class _Budget:
    def __init__(self, limits: PayloadLimits) -> None:
        self.limits = limits
        self.values = 0
        self.raw = 0

    def take(self, where: str, values: int, raw: int) -> None:
        self.values += values
        self.raw += raw
        if self.values > self.limits.max_values:
            raise ValueError(f"{where}: payload decodes to more than {self.limits.max_values} values")
        if self.raw > self.limits.max_bytes:
            raise ValueError(f"{where}: payload decompresses to more than {self.limits.max_bytes} bytes")


_FLOAT_MAX = float(np.finfo(np.float32).max)


def _check_meta(schema: Mapping[str, type], meta: Meta) -> None:
    for key, value in meta.items():
        kind = schema.get(key)
        if kind is None:
            raise ValueError(f"unknown key {key!r}")
        if kind is int:
            if type(value) is not int:
                raise ValueError(f"{key} must be an int, got {type(value).__name__}")
        elif type(value) not in (int, float) or not math.isfinite(value) or abs(value) > _FLOAT_MAX:
            raise ValueError(f"{key} must be a finite float32 value, got {value!r}")


def _record_from_wire(
    t: Any, where: str, chains: list[Chain], limits: PayloadLimits, budget: _Budget
) -> TensorRecord:
    if not isinstance(t, dict):
        raise ValueError(f"{where} must be a map")
    allowed = {"c", "dtype", "shape", "meta", "data", "z"}
    if set(t) - allowed:
        raise ValueError(f"{where} has unknown keys {sorted(map(str, set(t) - allowed))}")
    c = t.get("c")
    if type(c) is not int or not 0 <= c < len(chains):
        raise ValueError(f"{where}.c must index payload.chains (0..{len(chains) - 1}), got {c!r}")
    if t.get("dtype") != "float32":
        raise ValueError(f"{where}.dtype must be 'float32', got {t.get('dtype')!r}")
    shape = t.get("shape")
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > limits.max_ndim
        or not all(type(s) is int and 0 <= s < 1 << 40 for s in shape)
    ):
        raise ValueError(
            f"{where}.shape must be a list of at most {limits.max_ndim} sizes >= 0, got {shape!r}"
        )
    size = math.prod(shape)
    budget.take(f"{where}.shape", size, 0)
    meta = t.get("meta")
    if not isinstance(meta, list | tuple) or not all(isinstance(m, dict) for m in meta):
        raise ValueError(f"{where}.meta must be a list of maps")
    rec = TensorRecord(chains[c], tuple(shape), list(meta), [])
    try:
        layout = rec.layout()
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from None
    fields = [
        (stage.name, f) for stage, (fs, _) in zip(rec.chain.float_stages, layout, strict=True) for f in fs
    ]
    sizes = [f.nbytes for _, f in fields]
    budget.take(where, 0, sum(sizes))
    byte_stage = rec.chain.byte_stage
    if "z" in t:
        if byte_stage is None or "data" in t:
            raise ValueError(f"{where}.z: compressed data for a chain without a byte stage")
        blob = t["z"]
        if not isinstance(blob, bytes):
            raise ValueError(f"{where}.z must be bytes")
        try:
            raw = byte_stage.decompress(blob, sum(sizes))
        except ValueError as exc:
            raise ValueError(f"{where}.z: {exc}") from None
        rec.zdata = blob
        offsets = np.cumsum([0, *sizes]).tolist()
        mv = memoryview(raw)
        rec.raw = [bytes(mv[a:b]) for a, b in itertools.pairwise(offsets)]
    else:
        data = t.get("data")
        if not isinstance(data, list | tuple) or len(data) != len(fields):
            raise ValueError(f"{where}.data must be a list of {len(fields)} byte strings")
        for i, ((sname, f), b) in enumerate(zip(fields, data, strict=True)):
            if not isinstance(b, bytes):
                raise ValueError(f"{where}.data[{i}] ({sname}.{f.name}) must be bytes")
        rec.raw = list(data)
    for (sname, f), b, want in zip(fields, rec.raw, sizes, strict=True):
        if len(b) != want:
            raise ValueError(f"{where}.{sname}.{f.name}: {len(b)} bytes, expected {want}")
        if f.finite and not np.isfinite(np.frombuffer(b, f.dtype)).all():
            raise ValueError(f"{where}.{sname}.{f.name}: NaN or Inf values")
    return rec
