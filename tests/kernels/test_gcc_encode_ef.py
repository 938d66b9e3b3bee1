"""gcc_encode_ef (gcc_encode returning its new residual, the inputs only read) on both backends:
bit for bit gcc_encode on a copy of the residual, with and without a lent output."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

F32 = np.float32


def bits(a: np.ndarray) -> bytes:
    return a.dtype.str.encode() + a.tobytes()


def grads(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g: np.ndarray = (rng.laplace(0, 1e-3, n) + rng.choice([-5e-3, 0, 5e-3], n)).astype(F32)
    return g


@pytest.mark.parametrize(
    ("n", "k", "rho"),
    [
        (0, 16, 0.5),
        (1, 16, 0.5),
        (1000, 16, 0.5),
        (70_001, 16, 0.5),
        (4097, 4, 1.0),
        (4097, 4, 0.0),
        (513, 256, 0.25),
    ],
)
def test_equals_gcc_encode_on_a_copy_over_rounds(kern: ModuleType, n: int, k: int, rho: float) -> None:
    r = np.zeros(n, F32)
    spare = np.full(n, 7.0, F32)
    for rnd in range(4):
        x = grads(n, 10 * n + rnd)
        before = r.copy()
        want_r = r.copy()
        want = kern.gcc_encode(x, k, rho, want_r, 20, rnd)
        got = kern.gcc_encode_ef(x, k, rho, r, 20, rnd)
        assert bits(r) == bits(before)  # only read
        assert [bits(a) for a in got] == [bits(a) for a in (*want, want_r)]
        lent = kern.gcc_encode_ef(x, k, rho, r, 20, rnd, residual_out=spare)
        assert lent[4] is spare and bits(spare) == bits(want_r)
        assert [bits(a) for a in lent[:4]] == [bits(a) for a in want]
        assert bits(r) == bits(before)
        r, spare = spare, r  # the pipeline's rotation: the retired array is lent next round


def test_without_a_residual_acc_is_x(kern: ModuleType) -> None:
    x = grads(5000, 3)
    x[:10] = F32(-0.0)  # x + 0 would turn these into +0
    want = kern.gcc_encode(x, 16, 0.5)
    got = kern.gcc_encode_ef(x, 16, 0.5)
    assert [bits(a) for a in got[:4]] == [bits(a) for a in want]
    dec = kern.gcc_decode(*want, x.size)
    assert bits(got[4]) == bits(x - dec)


def test_a_failed_encode_leaves_the_residual_as_it_was(kern: ModuleType) -> None:
    x = grads(20_000, 4)
    r = grads(20_000, 5) * F32(0.1)
    before = r.copy()
    out = np.zeros_like(r)
    for bad, msg in ((np.nan, "x contains NaN or Inf"), (np.inf, "x contains NaN or Inf")):
        y = x.copy()
        y[123] = bad
        with pytest.raises(ValueError, match=msg):
            kern.gcc_encode_ef(y, 16, 0.5, r, residual_out=out)
        assert bits(r) == bits(before)
    big = np.full_like(x, F32(3e38))
    with pytest.raises(ValueError, match="x \\+ residual contains NaN or Inf"):
        kern.gcc_encode_ef(big, 16, 0.5, big.copy(), residual_out=out)


def test_bad_outputs(kern: ModuleType) -> None:
    x = grads(1000, 6)
    r = grads(1000, 7)
    with pytest.raises(TypeError):
        kern.gcc_encode_ef(x, 16, 0.5, r, residual_out=np.zeros(1000, np.float64))
    with pytest.raises(ValueError, match="size"):
        kern.gcc_encode_ef(x, 16, 0.5, r, residual_out=np.zeros(999, F32))
    ro = np.zeros(1000, F32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        kern.gcc_encode_ef(x, 16, 0.5, r, residual_out=ro)
    for other in (x, r):
        with pytest.raises(ValueError, match="overlap"):
            kern.gcc_encode_ef(x, 16, 0.5, r, residual_out=other)
    with pytest.raises(ValueError, match="size"):
        kern.gcc_encode_ef(x, 16, 0.5, r[:999])
    with pytest.raises(TypeError):
        kern.gcc_encode_ef(x, 16, 0.5, r.astype(np.float64))
    # a read-only residual is fine: it is only read
    r.flags.writeable = False
    kern.gcc_encode_ef(x, 16, 0.5, r)
