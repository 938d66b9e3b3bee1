"""Golomb-Rice coding of top-k indices: one suite, both backends (`kern`), and the C++ kernel bit
for bit against its NumPy twin, including on random (untrusted) streams."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from orbitfl.kernels import backend

CPP = backend("cpp")
REF = backend("numpy")
U32_MAX = 2**32 - 1


def _bits_to_bytes(bits: list[int]) -> np.ndarray:
    return np.packbits(np.array(bits, np.uint8), bitorder="little")


def _random_sets(rng: np.random.Generator) -> list[np.ndarray]:
    sets = [np.zeros(0, np.uint32), np.array([0], np.uint32), np.array([U32_MAX], np.uint32)]
    sets += [np.array([0, U32_MAX], np.uint32), np.array([U32_MAX - 1, U32_MAX], np.uint32)]
    sets += [np.arange(n, dtype=np.uint32) for n in (1, 2, 9, 1000)]  # every gap 1: k = n
    for n in (3, 100, 4099, 61_706, 1_000_000):
        for p in (1e-4, 0.005, 0.02, 0.03, 0.1, 0.5, 0.9):
            k = min(n, max(1, round(p * n)))
            sets.append(np.sort(rng.choice(n, k, replace=False)).astype(np.uint32))
    # clustered (runs of neighbours far apart) and huge gaps across the whole uint32 range
    starts = np.sort(rng.choice(2**20, 50, replace=False)) * 4096
    sets.append(np.unique((starts[:, None] + np.arange(30)).ravel()).astype(np.uint32))
    sets.append(np.unique(rng.integers(0, 2**32, 200, dtype=np.uint64)).astype(np.uint32))
    return sets


def test_known_bytes(kern: ModuleType) -> None:
    # gaps 1, 1, 4 -> v = 0, 0, 3; b = 1: [1 0] [1 0] [0 1 1], LSB first, one padding bit
    idx = np.array([0, 1, 5], np.uint32)
    buf = kern.rice_encode_indices(idx, 1)
    assert buf.dtype == np.uint8 and buf.tolist() == [0b0110_0101]
    np.testing.assert_array_equal(kern.rice_decode_indices(buf, 3, 1), idx)
    assert kern.rice_encode_indices(np.zeros(0, np.uint32), 7).size == 0
    assert kern.rice_decode_indices(np.zeros(0, np.uint8), 0, 7).size == 0
    assert kern.rice_best_param(np.zeros(0, np.uint32)) == 0
    # all gaps 1 cost one bit each at b = 0
    assert kern.rice_best_param(np.arange(80, dtype=np.uint32)) == 0
    assert kern.rice_encode_indices(np.arange(80, dtype=np.uint32), 0).tolist() == [0xFF] * 10


def test_round_trip_many_densities_and_sizes(kern: ModuleType) -> None:
    rng = np.random.default_rng(21)
    for idx in _random_sets(rng):
        best = kern.rice_best_param(idx)
        assert 0 <= best <= 31
        span = int(idx[-1]) + 1 if idx.size else 0
        # b = 0 writes a unary bit per skipped index: only where the span is small
        for b in sorted({best, max(0, best - 1), min(31, best + 1), 31} | ({0} if span <= 2**21 else set())):
            buf = kern.rice_encode_indices(idx, b)
            back = kern.rice_decode_indices(buf, idx.size, b)
            assert back.dtype == np.uint32
            np.testing.assert_array_equal(back, idx)


def test_best_param_is_the_shortest(kern: ModuleType) -> None:
    rng = np.random.default_rng(22)
    for idx in _random_sets(rng):
        if not idx.size:
            continue
        best = kern.rice_best_param(idx)
        here = kern.rice_encode_indices(idx, best).size
        for b in (best - 1, best + 1):
            if 0 <= b <= 31 and (b > 0 or int(idx[-1]) < 2**21):
                assert here <= kern.rice_encode_indices(idx, b).size


def test_rice_is_shorter_than_varints_on_sparse_uniform_sets(kern: ModuleType) -> None:
    rng = np.random.default_rng(23)
    n = 61_706
    for p in (0.005, 0.01, 0.02, 0.03, 0.1):
        idx = np.sort(rng.choice(n, round(p * n), replace=False)).astype(np.uint32)
        rice = kern.rice_encode_indices(idx, kern.rice_best_param(idx)).size
        assert rice < kern.delta_encode_indices(idx).size
        # within 2 % (and a byte) of the entropy of geometric gaps at this density
        h = (-(1 - p) * np.log2(1 - p) - p * np.log2(p)) / p
        assert rice <= 1.02 * idx.size * h / 8 + 1


def test_cpp_and_twin_are_bit_identical() -> None:
    rng = np.random.default_rng(24)
    for idx in _random_sets(rng):
        b = CPP.rice_best_param(idx)
        assert b == REF.rice_best_param(idx)
        for bb in {b, min(31, b + 2), 31}:
            enc = CPP.rice_encode_indices(idx, bb)
            assert np.array_equal(enc, REF.rice_encode_indices(idx, bb))
    # skewed sets, where the shortest b is not the mean-gap estimate
    for _ in range(200):
        k = int(rng.integers(1, 60))
        gaps = np.where(rng.random(k) < 0.8, 1, rng.integers(1, 2 ** int(rng.integers(1, 25)), k))
        idx = (np.cumsum(gaps) - 1).astype(np.uint32)
        assert CPP.rice_best_param(idx) == REF.rice_best_param(idx)


def test_random_streams_decode_alike_or_are_refused_alike() -> None:
    rng = np.random.default_rng(25)
    seen_ok = seen_bad = 0
    for it in range(3000):
        b = int(rng.integers(0, 32))
        if it % 3 == 0:  # random bytes, half of them sparse: long unary runs, huge gaps
            buf = rng.integers(0, 256, int(rng.integers(0, 12)), dtype=np.uint8)
            if rng.random() < 0.5:
                buf &= rng.integers(0, 256, buf.size, dtype=np.uint8)
            k = int(rng.integers(0, 20))
        else:  # a valid stream, perhaps with one bit flipped, a byte cut or added, k off by one
            k = int(rng.integers(0, 20))
            span = min(2**32, max(k, 1) << min(b + 3, 32))
            idx = np.sort(rng.choice(span, k, replace=False)).astype(np.uint32)
            buf = CPP.rice_encode_indices(idx, b).copy()
            what = int(rng.integers(0, 5))
            if what == 1 and buf.size:
                buf[rng.integers(0, buf.size)] ^= np.uint8(1 << int(rng.integers(0, 8)))
            elif what == 2 and buf.size:
                buf = buf[:-1]
            elif what == 3:
                buf = np.append(buf, rng.integers(0, 256, 1, dtype=np.uint8))
            elif what == 4:
                k = max(0, k + int(rng.choice([-1, 1])))
        results: list[Any] = []
        for kern in (CPP, REF):
            try:
                results.append(kern.rice_decode_indices(buf, k, b))
            except ValueError:
                results.append(ValueError)
        if isinstance(results[0], np.ndarray):
            seen_ok += 1
            assert isinstance(results[1], np.ndarray) and np.array_equal(results[0], results[1])
            # a stream that decodes is the canonical one: encoding gives it back
            assert np.array_equal(CPP.rice_encode_indices(results[0], b), buf)
        else:
            seen_bad += 1
            assert results[1] is ValueError
    assert seen_ok > 300 and seen_bad > 300


def _malformed() -> list[tuple[str, np.ndarray, int, int]]:
    good = CPP.rice_encode_indices(np.array([0, 1, 5, 900], np.uint32), 3)
    padded = CPP.rice_encode_indices(np.array([0, 1, 5], np.uint32), 1).copy()
    padded[-1] |= 0x80
    # q = 2 at b = 31: (2 << 31) is beyond uint32
    big_gap = _bits_to_bytes([0, 0, 1] + [0] * 31)
    # two gaps of 2**31 + 1: the second index is 2**32 + 1
    past_uint32 = _bits_to_bytes(([0, 1] + [0] * 31) * 2)
    return [
        ("truncated", good[:-1], 4, 3),
        ("truncated", np.zeros(3, np.uint8), 1, 0),  # no stop bit at all
        ("truncated", good, 5, 3),
        ("truncated", np.zeros(1, np.uint8), 9, 0),  # k codes cannot fit in the bytes
        ("overlong", np.append(good, np.uint8(0)), 4, 3),
        ("overlong", np.array([1, 1], np.uint8), 1, 0),
        ("padding", padded, 3, 1),
        ("beyond uint32", big_gap, 1, 31),
        ("beyond uint32", past_uint32, 2, 31),
    ]


@pytest.mark.parametrize(("what", "buf", "k", "b"), _malformed())
def test_malformed_streams_are_refused(kern: ModuleType, what: str, buf: np.ndarray, k: int, b: int) -> None:
    with pytest.raises(ValueError, match=what.split()[0]):
        kern.rice_decode_indices(buf, k, b)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.rice_encode_indices(np.array([3, 3], np.uint32), 2), ValueError),
        (lambda k: k.rice_encode_indices(np.array([3, 2], np.uint32), 2), ValueError),
        (lambda k: k.rice_best_param(np.array([3, 2], np.uint32)), ValueError),
        (lambda k: k.rice_encode_indices(np.array([1, 2], np.int64), 2), TypeError),
        (lambda k: k.rice_encode_indices([1, 2], 2), TypeError),
        (lambda k: k.rice_best_param(np.array([1, 2], np.int32)), TypeError),
        (lambda k: k.rice_encode_indices(np.arange(4, dtype=np.uint32)[::2], 2), ValueError),
        (lambda k: k.rice_encode_indices(np.array([1, 2], np.uint32), 32), ValueError),
        (lambda k: k.rice_encode_indices(np.array([1, 2], np.uint32), -1), ValueError),
        (lambda k: k.rice_encode_indices(np.array([1, 2], np.uint32), 1.5), TypeError),
        (lambda k: k.rice_decode_indices(np.array([1], np.uint8), 1, 32), ValueError),
        (lambda k: k.rice_decode_indices(np.array([1], np.uint8), 1, -1), ValueError),
        (lambda k: k.rice_decode_indices(np.array([1], np.uint8), -1, 0), ValueError),
        (lambda k: k.rice_decode_indices(np.array([1], np.uint8), 2**40, 0), ValueError),
        (lambda k: k.rice_decode_indices(np.array([1], np.int8), 1, 0), TypeError),
        (lambda k: k.rice_decode_indices(np.array([1], np.uint16), 1, 0), TypeError),
        (lambda k: k.rice_decode_indices(np.array([1], np.uint8), 1.0, 0), TypeError),
    ],
)
def test_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)
