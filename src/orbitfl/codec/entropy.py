"""How close a payload comes to the order-0 entropy of the symbols it carries.

The symbols of a field are what its stage emits before any byte stage: b-bit codes for packed fields
(quantization levels, labels, centroid ids, sign bits), bytes for everything else (float32 values,
varint gaps). The order-0 entropy H of each field's symbol histogram gives a bound, n·H/8 bytes,
that a coder treating symbols as independent cannot beat; zstd models context and may go below it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from orbitfl.codec.payload import Payload


@dataclass(frozen=True)
class EntropyRow:
    tensor: str
    field: str  # "stage.field"
    symbols: int
    symbol_bits: int
    raw_bytes: int  # as packed, before the byte stage
    entropy_bits_per_symbol: float

    @property
    def entropy_bytes(self) -> float:
        return self.symbols * self.entropy_bits_per_symbol / 8


@dataclass(frozen=True)
class EntropyReport:
    rows: list[EntropyRow]
    raw_bytes: int  # sum of the fields before the byte stage
    stored_bytes: int  # the same fields as stored (after zstd where it helped)
    payload_bytes: int  # payload.nbytes, including names, shapes, metadata

    @property
    def entropy_bytes(self) -> float:
        return sum(r.entropy_bytes for r in self.rows)

    def summary(self) -> str:
        return (
            f"{self.raw_bytes} B packed, {self.stored_bytes} B stored, order-0 entropy "
            f"{self.entropy_bytes:.0f} B, payload {self.payload_bytes} B"
        )


def symbol_entropy(symbols: NDArray[np.integer], alphabet: int) -> float:
    """Empirical order-0 entropy in bits per symbol of integer symbols in [0, alphabet)."""
    if symbols.size == 0:
        return 0.0
    counts = np.bincount(symbols.reshape(-1).astype(np.intp), minlength=alphabet)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum())


def _symbols(buf: bytes, count: int, bits: int) -> NDArray[np.uint8]:
    b = np.frombuffer(buf, np.uint8)
    if bits == 8:
        return b
    # LSB-first bit stream: symbol i is bits [i*bits, (i+1)*bits).
    stream = np.unpackbits(b, bitorder="little")[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits)).astype(np.uint8)
    out: NDArray[np.uint8] = (stream * weights).sum(axis=1, dtype=np.uint8)
    return out


def entropy_report(payload: Payload) -> EntropyReport:
    """Bytes of each field against the order-0 entropy of its symbols (see the module doc)."""
    rows: list[EntropyRow] = []
    raw_total = stored = 0
    for name, rec in payload.records.items():
        it = iter(rec.raw)
        for stage, (fields, _) in zip(rec.chain.float_stages, rec.layout(), strict=True):
            for f in fields:
                buf = next(it)
                packed = f.dtype == "u1" and f.symbol_bits < 8
                bits = f.symbol_bits if packed else 8
                count = f.symbols if packed else len(buf)
                syms = _symbols(buf, count, bits)
                rows.append(
                    EntropyRow(
                        name, f"{stage.name}.{f.name}", count, bits, len(buf), symbol_entropy(syms, 1 << bits)
                    )
                )
        raw_total += rec.nbytes_raw
        stored += len(rec.zdata) if rec.zdata is not None else rec.nbytes_raw
    return EntropyReport(rows, raw_total, stored, payload.nbytes)
