"""topk_ef (topk returning its new residual, the inputs only read) on both backends: bit for bit
topk on a copy of the residual, at sizes that take the C++ one-pass path and its fallbacks."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from orbitfl.kernels import backend

F32 = np.float32
ONE_PASS_N = 16 * 4096  # from here the C++ kernel gathers in one pass from a sampled threshold


def bits(a: np.ndarray) -> bytes:
    return a.dtype.str.encode() + a.tobytes()


def check(kern: ModuleType, x: np.ndarray, k: int, r: np.ndarray | None) -> np.ndarray:
    before = None if r is None else r.copy()
    got = kern.topk_ef(x, k, r)
    if r is None:
        idx, vals = kern.topk(x, k)
        want_r = x.copy()
        want_r[idx] = F32(0)
    else:
        want_r = r.copy()
        idx, vals = kern.topk(x, k, want_r)
        assert before is not None and bits(r) == bits(before)  # only read
    assert [bits(a) for a in got] == [bits(idx), bits(vals), bits(want_r)]
    out: np.ndarray = got[2]
    return out


@pytest.mark.parametrize("n", [0, 1, 17, 4099, ONE_PASS_N - 1, ONE_PASS_N + 5, 250_001])
def test_equals_topk_on_a_copy_over_rounds(kern: ModuleType, n: int) -> None:
    rng = np.random.default_rng(n)
    for k in sorted({0, min(1, n), n // 100, n // 16, min(n, n // 16 + 1), n // 3, n}):
        r = np.zeros(n, F32)
        for _ in range(3):
            r = check(kern, rng.laplace(0, 1e-3, n).astype(F32), k, r)
        x = rng.standard_normal(n).astype(F32)
        x[::5] = -0.0
        check(kern, x, k, None)


def test_ties_and_misleading_samples(kern: ModuleType) -> None:
    n = 300_000
    stride = n // 4096
    rng = np.random.default_rng(3)
    ties = (rng.integers(-6, 7, n) * F32(0.25)).astype(F32)
    high = (rng.standard_normal(n) * 1e-3).astype(F32)
    high[::stride] = F32(5.0)  # the sample sees only big values: too few reach its guess
    low = (rng.standard_normal(n) * 1e-3).astype(F32)
    off = np.ones(n, bool)
    off[::stride] = False
    low[off] *= F32(1000.0)  # the sample sees only small values: too many reach its guess
    for x in (ties, high, low):
        for k in (10, 3000, 15_000):
            check(kern, x, k, rng.standard_normal(n).astype(F32) * F32(1e-4))


def test_cpp_and_numpy_bitwise_equal() -> None:
    cpp, ref = backend("cpp"), backend("numpy")
    rng = np.random.default_rng(4)
    for n in (0, 3, 5000, ONE_PASS_N + 1, 200_000):
        x = rng.laplace(0, 1e-3, n).astype(F32)
        r = rng.laplace(0, 1e-3, n).astype(F32)
        for k in sorted({0, min(1, n), n // 64, n}):
            for res in (r, None):
                assert [bits(a) for a in cpp.topk_ef(x, k, res)] == [bits(a) for a in ref.topk_ef(x, k, res)]


def z(n: int = 4) -> np.ndarray:
    return np.zeros(n, F32)


BAD: list[tuple[Callable[[ModuleType], Any], type[Exception], str]] = [
    (lambda k: k.topk_ef(np.zeros(4), 1, z()), TypeError, "x"),
    (lambda k: k.topk_ef(z(), 1, np.zeros(4)), TypeError, "residual"),
    (lambda k: k.topk_ef(z(), 1.0, z()), TypeError, "k"),
    (lambda k: k.topk_ef(z(), 5, z()), ValueError, "k must be in"),
    (lambda k: k.topk_ef(z(), 1, z(3)), ValueError, "residual must have the size"),
    (lambda k: k.topk_ef(z(), 1, z(8)[::2]), ValueError, "C-contiguous"),
    (lambda k: k.topk_ef(np.array([0, np.nan, 0, 0], F32), 1, z()), ValueError, "x contains"),
    (lambda k: k.topk_ef(z(), 1, np.array([0, np.inf, 0, 0], F32)), ValueError, "residual contains"),
    (lambda k: k.topk_ef(np.full(4, 3e38, F32), 1, np.full(4, 3e38, F32)), ValueError, "overflows"),
]


@pytest.mark.parametrize(("call", "exc", "words"), BAD)
def test_bad_arguments(
    kern: ModuleType, call: Callable[[ModuleType], Any], exc: type[Exception], words: str
) -> None:
    with pytest.raises(exc, match=words):
        call(kern)


def test_non_finite_in_a_large_input_leaves_it_untouched(kern: ModuleType) -> None:
    n = 2 * ONE_PASS_N
    rng = np.random.default_rng(5)
    x = rng.standard_normal(n).astype(F32)
    r = rng.standard_normal(n).astype(F32)
    r[n - 3] = np.inf
    before = r.copy()
    with pytest.raises(ValueError, match="residual contains NaN or Inf"):
        kern.topk_ef(x, 100, r)
    assert bits(r) == bits(before)


def test_a_lent_residual_out_gets_the_same_bits_and_is_returned(kern: ModuleType) -> None:
    n = ONE_PASS_N * 3 + 13
    rng = np.random.default_rng(21)
    x = rng.laplace(0, 1e-3, n).astype(F32)
    r = rng.laplace(0, 1e-3, n).astype(F32)
    lent = np.full(n, np.nan, F32)
    for res in (r, None):
        for k in (0, 1, n // 50, n // 2, n // 2 + 1, n):
            want = kern.topk_ef(x, k, res)
            got = kern.topk_ef(x, k, res, residual_out=lent)
            assert got[2] is lent
            assert [bits(a) for a in got] == [bits(a) for a in want]
    with pytest.raises(ValueError, match="must not overlap"):
        kern.topk_ef(x, 1, r, residual_out=r)
    with pytest.raises(ValueError, match="must not overlap"):
        kern.topk_ef(x, 1, None, residual_out=x)
    with pytest.raises(ValueError, match="residual_out must have the size"):
        kern.topk_ef(x, 1, r, residual_out=np.zeros(5, F32))
    with pytest.raises(TypeError, match="residual_out"):
        kern.topk_ef(x, 1, r, residual_out=np.zeros(n))
