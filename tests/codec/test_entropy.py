"""The entropy report: order-0 entropy of each field's symbols against the bytes sent."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.codec import Pipeline, entropy_report, symbol_entropy


def test_symbol_entropy_of_known_distributions() -> None:
    assert symbol_entropy(np.zeros(100, np.uint8), 256) == 0.0
    assert symbol_entropy(np.arange(16, dtype=np.uint8).repeat(10), 16) == pytest.approx(4.0)
    assert symbol_entropy(np.array([0, 0, 0, 1], np.uint8), 2) == pytest.approx(0.8112781, rel=1e-6)
    assert symbol_entropy(np.zeros(0, np.uint8), 2) == 0.0


def test_report_reads_packed_codes_as_symbols(backend: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 20_000).astype(np.float32)
    rep = entropy_report(Pipeline.parse("quant:4,bucket=20000", backend).encode({"x": x}))
    codes = next(r for r in rep.rows if r.field == "quant.packed")
    assert codes.symbols == 20_000 and codes.symbol_bits == 4 and codes.raw_bytes == 10_000
    assert 3.9 < codes.entropy_bits_per_symbol <= 4.0  # uniform values: nearly uniform codes
    assert rep.raw_bytes == rep.stored_bytes == 10_000 + 8
    assert rep.payload_bytes > rep.raw_bytes


def test_zstd_gets_below_packed_size_when_entropy_is_low(backend: str) -> None:
    rng = np.random.default_rng(1)
    x = np.where(rng.random(50_000) < 0.95, 0.0, rng.normal(size=50_000)).astype(np.float32)
    rep = entropy_report(Pipeline.parse("quant:8,bucket=50000|zstd", backend).encode({"x": x}))
    codes = next(r for r in rep.rows if r.field == "quant.packed")
    assert codes.entropy_bits_per_symbol < 1.0
    assert rep.stored_bytes < rep.raw_bytes / 3
    assert rep.entropy_bytes < rep.raw_bytes
    assert "order-0 entropy" in rep.summary()
