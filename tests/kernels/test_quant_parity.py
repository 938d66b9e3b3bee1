"""The C++ kernels against the NumPy reference, bit for bit, and from several threads at once."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from orbitfl.kernels import backend

F32 = np.float32
CPP = backend("cpp")
REF = backend("numpy")


def same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return bool(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes())
    return bool(a == b)


def inputs(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for n in (0, 1, 15, 16, 17, 100, 2047, 2048, 2049, 5000):
        out.append((rng.standard_normal(n) * np.exp(rng.uniform(-20, 20))).astype(F32))
    z = rng.standard_normal(3000).astype(F32)
    z[::3] = 0.0
    z[1::7] = -0.0
    out.append(z)
    out.append((rng.standard_normal(3000) * 1e-41).astype(F32))  # subnormal steps: divide path
    out.append(rng.integers(-8, 8, 3000).astype(F32))  # exact ties
    out.append(np.full(1000, 7.0, F32))
    return out


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("bucket", [1, 5, 16, 512, 4096])
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_bitwise_equal(bits: int, bucket: int, stochastic: bool) -> None:
    for x in inputs(bits * 7 + bucket):
        a = CPP.quantize(x, bits, bucket, stochastic, 2024)
        b = REF.quantize(x, bits, bucket, stochastic, 2024)
        assert same(a, b), (x.size, bits, bucket, stochastic)
        assert same(CPP.dequantize(*a, x.size, bits, bucket), REF.dequantize(*b, x.size, bits, bucket))


def test_rng_draws_equal() -> None:
    # Stochastic codes of a ramp expose every draw: u < frac decides each one.
    x = np.linspace(0, 1, 100_003, dtype=F32)
    for seed in (0, 1, 2**63, 2**64 - 1):
        assert same(CPP.quantize(x, 8, 100_003, True, seed), REF.quantize(x, 8, 100_003, True, seed))


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_bitwise_equal(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for n in (0, 1, 31, 32, 33, 64, 1000, 4097):
        s = rng.integers(0, 1 << bits, n).astype(np.uint8)
        assert same(CPP.pack_bits(s, bits), REF.pack_bits(s, bits))
        p = CPP.pack_bits(s, bits)
        assert same(CPP.unpack_bits(p, n, bits), REF.unpack_bits(p, n, bits))


def test_casts_bitwise_equal_on_all_bit_patterns() -> None:
    x = np.random.default_rng(1).integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(F32)
    special = np.array(
        [
            0x7F800001,
            0xFFC00000,
            0x7FFFFFFF,
            0x00000001,
            0x80000000,
            0x477FF000,
            0x477FEFFF,
            0x387FFFFF,
            0x38800000,
            0x33000000,
            0x33000001,
            0x7F7FFFFF,
        ],
        np.uint32,
    ).view(F32)
    x = np.concatenate([x, special])
    assert same(CPP.to_float16(x), REF.to_float16(x))
    assert same(CPP.to_bfloat16(x), REF.to_bfloat16(x))
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    assert same(CPP.from_float16(h), REF.from_float16(h))
    assert same(CPP.from_bfloat16(h), REF.from_bfloat16(h))


def test_topk_sign_delta_bitwise_equal() -> None:
    rng = np.random.default_rng(11)
    for n in (0, 1, 10, 1000, 20_000):
        x = rng.integers(-30, 30, n).astype(F32) * F32(0.5)
        r1 = rng.standard_normal(n).astype(F32)
        r2 = r1.copy()
        for k in sorted({0, min(1, n), n // 3, n}):
            a, b = CPP.topk(x, k, r1), REF.topk(x, k, r2)
            assert same(a, b) and same(r1, r2)
            assert same(CPP.delta_encode_indices(a[0]), REF.delta_encode_indices(b[0]))
        a2, b2 = CPP.sign_encode(x, r1), REF.sign_encode(x, r2)
        assert same(a2, b2) and same(r1, r2)
        assert same(CPP.sign_decode(a2[0], n, a2[1]), REF.sign_decode(b2[0], n, b2[1]))


def run_threads(fn: Callable[[int], Any], jobs: int) -> list[Any]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(fn, range(jobs)))


def test_threads_give_serial_results(kern: ModuleType) -> None:
    rng = np.random.default_rng(12)
    xs = [rng.standard_normal(200_000).astype(F32) for _ in range(8)]

    def job(i: int) -> tuple[Any, ...]:
        x = xs[i]
        q = kern.quantize(x, 1 + i % 8, 256, i % 2 == 1, i)
        residual = np.zeros_like(x)
        t = kern.topk(x, 1000, residual)
        s = kern.sign_encode(x)
        return q, kern.dequantize(*q, x.size, 1 + i % 8, 256), t, residual, s, kern.to_float16(x)

    serial = [job(i) for i in range(8)]
    parallel = run_threads(job, 8)
    for a, b in zip(serial, parallel, strict=True):
        assert same(a, b)


def test_errors_from_threads_are_value_errors() -> None:
    bad = np.array([1.0, np.nan] * 1000, F32)

    def job(i: int) -> str:
        try:
            CPP.quantize(bad, 4)
        except ValueError as e:
            return str(e)
        return "no error"

    assert all("NaN" in m for m in run_threads(job, 8))
