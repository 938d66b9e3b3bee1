"""scatter_sub (error feedback's fold: out[indices] = a - b in place) on both backends: NumPy's
fancy assignment bit for bit, in order, and bad arguments refused before anything is written."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

F32 = np.float32


@pytest.mark.parametrize(("n", "k"), [(0, 0), (1, 1), (40, 17), (300_001, 9_000), (300_001, 300_001)])
def test_equals_numpy_fancy_assignment(kern: ModuleType, n: int, k: int) -> None:
    rng = np.random.default_rng(n + k)
    out = rng.standard_normal(n).astype(F32)
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.uint32) if n else np.zeros(0, np.uint32)
    a = rng.standard_normal(k).astype(F32)
    b = (a * F32(0.5)).astype(F32)
    if k:
        a[0], b[0] = F32(-0.0), F32(0.0)  # -0 - 0 = -0
        a[-1], b[-1] = F32(1e-38), F32(-1e-39)  # subnormal difference
    want = out.copy()
    want[idx] = a - b
    assert kern.scatter_sub(out, idx, a, b) is None
    assert out.tobytes() == want.tobytes()


def test_any_order_and_repeats_keep_the_last(kern: ModuleType) -> None:
    out = np.zeros(10, F32)
    idx = np.array([7, 2, 7, 0], np.uint32)
    kern.scatter_sub(out, idx, np.array([1, 2, 3, 4], F32), np.array([0.5, 0, 1, 0], F32))
    np.testing.assert_array_equal(out, np.array([4, 0, 2, 0, 0, 0, 0, 2, 0, 0], F32))


def z(n: int = 3) -> np.ndarray:
    return np.zeros(n, F32)


def u(*v: int) -> np.ndarray:
    return np.array(v, np.uint32)


BAD: list[tuple[Callable[[ModuleType, np.ndarray], Any], type[Exception], str]] = [
    (lambda k, o: k.scatter_sub(o, u(0, 1, 5), z(), z()), ValueError, "indices must be below out.size"),
    (lambda k, o: k.scatter_sub(o, np.array([0, 1, 2]), z(), z()), TypeError, "indices"),
    (lambda k, o: k.scatter_sub(o, u(0, 1, 2), np.zeros(3), z()), TypeError, "a"),
    (lambda k, o: k.scatter_sub(o, u(0, 1, 2), z(), z(2)), ValueError, "b must have the size of indices"),
    (lambda k, o: k.scatter_sub(o[::2], u(0), z(1), z(1)), ValueError, "C-contiguous"),
    (lambda k, o: k.scatter_sub(o.astype(np.float64), u(0), z(1), z(1)), TypeError, "out"),
]


@pytest.mark.parametrize(("call", "exc", "words"), BAD)
def test_bad_arguments_write_nothing(
    kern: ModuleType, call: Callable[[ModuleType, np.ndarray], Any], exc: type[Exception], words: str
) -> None:
    out = np.arange(5, dtype=F32)
    with pytest.raises(exc, match=words):
        call(kern, out)
    np.testing.assert_array_equal(out, np.arange(5, dtype=F32))


def test_a_read_only_out_is_refused(kern: ModuleType) -> None:
    out = np.zeros(4, F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writable"):
        kern.scatter_sub(out, u(1), z(1), z(1))
