"""dgc_select (DGC's fused sender step) on both backends: bit for bit the steps it replaces (NumPy's
momentum update, then topk with the residual, then masking), the two backends alike, the sampled
one-pass path and its fallbacks, and bad input refused with the inputs untouched."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from orbitfl.kernels import backend

F32 = np.float32
CPP = backend("cpp")
REF = backend("numpy")
# The C++ kernel gathers in one pass from a sampled threshold once n reaches 16 * 4096.
ONE_PASS_N = 16 * 4096


def bits(a: np.ndarray) -> bytes:
    return a.dtype.str.encode() + a.tobytes()


def steps(kern: ModuleType, x: np.ndarray, u: np.ndarray, v: np.ndarray, m: float, k: int) -> tuple[Any, ...]:
    """What the dgc stage did before dgc_select: u = m·u + x in NumPy, topk(u, k, v), u[idx] = 0."""
    u1 = np.multiply(u, F32(m))
    np.add(u1, x, out=u1)
    v1 = v.copy()
    idx, vals = kern.topk(u1, k, v1)
    u1[idx] = F32(0)
    return idx, vals, u1, v1


def check_rounds(kern: ModuleType, xs: list[np.ndarray], m: float, k: int) -> None:
    n = xs[0].size
    u = np.zeros(n, F32)
    v = np.zeros(n, F32)
    for x in xs:
        u_before, v_before = u.copy(), v.copy()
        got = kern.dgc_select(x, u, v, m, k)
        want = steps(kern, x, u, v, m, k)
        assert [bits(a) for a in got] == [bits(a) for a in want]
        assert bits(u) == bits(u_before) and bits(v) == bits(v_before)  # only read
        u, v = got[2], got[3]


def laplace(n: int, rounds: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    drift = rng.laplace(0, 1e-3, n)
    return [(drift + rng.laplace(0, 5e-4, n)).astype(F32) for _ in range(rounds)]


@pytest.mark.parametrize("n", [1, 15, 17, 1000, 4099, ONE_PASS_N - 1, ONE_PASS_N + 17, 250_003])
def test_equals_the_steps_it_replaces_over_rounds(kern: ModuleType, n: int) -> None:
    ks = sorted({1, max(1, n // 100), max(1, n // 16), min(n, n // 16 + 1), max(1, n // 3), n})
    for k in ks:
        check_rounds(kern, laplace(n, 4, seed=n + k), 0.5, k)
    check_rounds(kern, laplace(n, 3, seed=1), 0.9, max(1, n // 50))
    check_rounds(kern, laplace(n, 2, seed=2), 0.0, max(1, n // 50))


def test_ties_zeros_and_signed_zeros(kern: ModuleType) -> None:
    rng = np.random.default_rng(5)
    n = ONE_PASS_N + 1000
    ties = [(rng.integers(-6, 7, n) * F32(0.25)).astype(F32) for _ in range(3)]
    for k in (1, 700, 5000):
        check_rounds(kern, ties, 0.5, k)
    zeros = np.zeros(n, F32)
    zeros[1::2] = -0.0
    check_rounds(kern, [zeros, zeros], 0.5, 10)


def test_misleading_samples_fall_back_to_the_exact_answer(kern: ModuleType) -> None:
    """The sampled threshold can be too high (the sampled places hold the big values) or too low
    (they hold none of them): the result must not change."""
    n = 300_000
    stride = n // 4096
    rng = np.random.default_rng(6)
    high = (rng.standard_normal(n) * 1e-3).astype(F32)
    high[::stride] = F32(5.0)  # the sample sees only big values: too few reach its guess
    low = (rng.standard_normal(n) * 1e-3).astype(F32)
    off = np.ones(n, bool)
    off[::stride] = False
    low[off] *= F32(1000.0)  # the sample sees only small values: far too many reach its guess
    for x in (high, low):
        for k in (10, 3000, 15_000):
            check_rounds(kern, [x, x], 0.5, k)


def test_cpp_and_numpy_bitwise_equal() -> None:
    for n in (0, 1, 33, 5000, ONE_PASS_N + 3, 200_000):
        xs = laplace(n, 3, seed=n)
        for k in sorted({0, min(1, n), n // 64, n}):
            uc = ur = np.zeros(n, F32)
            vc = vr = np.zeros(n, F32)
            for x in xs:
                c = CPP.dgc_select(x, uc, vc, 0.7, k)
                r = REF.dgc_select(x, ur, vr, 0.7, k)
                assert [bits(a) for a in c] == [bits(a) for a in r]
                uc, vc, ur, vr = c[2], c[3], r[2], r[3]


def z(n: int = 4) -> np.ndarray:
    return np.zeros(n, F32)


BAD_X = np.array([1, np.nan, 0, 0], F32)
BAD_U = np.array([0, 0, np.inf, 0], F32)
BAD_V = np.array([0, 0, 0, -np.inf], F32)
BIG = np.full(4, 3e38, F32)
BAD: list[tuple[Callable[[ModuleType], Any], type[Exception], str]] = [
    (lambda k: k.dgc_select(np.zeros(4), z(), z(), 0.5, 1), TypeError, "x"),
    (lambda k: k.dgc_select(z(), np.zeros(4), z(), 0.5, 1), TypeError, "momentum"),
    (lambda k: k.dgc_select(z(), z(), np.zeros(4, np.float16), 0.5, 1), TypeError, "residual"),
    (lambda k: k.dgc_select([0.0] * 4, z(), z(), 0.5, 1), TypeError, "x"),
    (lambda k: k.dgc_select(z(), z(), z(), 0.5, 1.0), TypeError, "k"),
    (lambda k: k.dgc_select(z(), z(3), z(), 0.5, 1), ValueError, "momentum must have the size"),
    (lambda k: k.dgc_select(z(), z(), z(5), 0.5, 1), ValueError, "residual must have the size"),
    (lambda k: k.dgc_select(z(), z(8)[::2], z(), 0.5, 1), ValueError, "C-contiguous"),
    (lambda k: k.dgc_select(z(), z(), z(), 0.5, 5), ValueError, "k must be in"),
    (lambda k: k.dgc_select(z(), z(), z(), 0.5, -1), ValueError, "k must be in"),
    (lambda k: k.dgc_select(z(), z(), z(), 1.0, 1), ValueError, "m must be in"),
    (lambda k: k.dgc_select(z(), z(), z(), -0.1, 1), ValueError, "m must be in"),
    (lambda k: k.dgc_select(z(), z(), z(), float("nan"), 1), ValueError, "m must be in"),
    (lambda k: k.dgc_select(BAD_X, z(), z(), 0.5, 1), ValueError, "x contains"),
    (lambda k: k.dgc_select(z(), BAD_U, z(), 0.5, 1), ValueError, "momentum contains"),
    (lambda k: k.dgc_select(z(), z(), BAD_V, 0.5, 1), ValueError, "residual contains"),
    (lambda k: k.dgc_select(BIG, z(), BIG, 0.5, 1), ValueError, "overflows"),
]


@pytest.mark.parametrize(("call", "exc", "words"), BAD)
def test_bad_arguments(
    kern: ModuleType, call: Callable[[ModuleType], Any], exc: type[Exception], words: str
) -> None:
    with pytest.raises(exc, match=words):
        call(kern)


@pytest.mark.parametrize("where", ["x", "momentum", "residual"])
def test_non_finite_in_a_large_input_is_named_and_the_inputs_stay(kern: ModuleType, where: str) -> None:
    n = ONE_PASS_N * 2
    rng = np.random.default_rng(7)
    arrays = {name: rng.standard_normal(n).astype(F32) for name in ("x", "momentum", "residual")}
    arrays[where][n - 5] = np.nan
    before = {name: a.copy() for name, a in arrays.items()}
    with pytest.raises(ValueError, match=f"{where} contains NaN or Inf"):
        kern.dgc_select(arrays["x"], arrays["momentum"], arrays["residual"], 0.5, 100)
    for name, a in arrays.items():
        assert bits(a) == bits(before[name])


def test_read_only_state_is_accepted(kern: ModuleType) -> None:
    x = laplace(ONE_PASS_N + 5, 1, seed=8)[0]
    u = np.ones_like(x) * F32(1e-4)
    v = np.ones_like(x) * F32(-1e-4)
    u.flags.writeable = v.flags.writeable = False
    got = kern.dgc_select(x, u, v, 0.5, 300)
    assert [bits(a) for a in got] == [bits(a) for a in steps(kern, x, u, v, 0.5, 300)]


def test_one_pass_up_to_half_and_across_blocks_and_the_tail(kern: ModuleType) -> None:
    """The one-pass path (now up to k = n/2) on a length that leaves a 13-value tail after the
    16-value blocks: candidates at block edges and in the tail, all-equal magnitudes (every value a
    tie), k at and around n/2 and near n; equal to the NumPy twin bit for bit."""
    n = 3 * ONE_PASS_N + 13
    rng = np.random.default_rng(12)
    x = rng.laplace(0, 1e-3, n).astype(F32)
    x[15::16] *= F32(50.0)  # big values on the last lane of each block
    x[-13:] = F32(0.5) * rng.choice([-1, 1], 13).astype(F32)  # and in the tail
    equal = rng.choice(np.array([-1, 1], F32), n) * F32(0.25)
    for xs in (x, equal):
        u = rng.laplace(0, 1e-3, n).astype(F32) if xs is x else np.zeros(n, F32)
        v = rng.laplace(0, 1e-3, n).astype(F32) if xs is x else np.zeros(n, F32)
        for k in (1, 7, n // 40, n // 16 + 1, n // 4, n // 2 - 1, n // 2, n // 2 + 1, n - 1):
            got = kern.dgc_select(xs, u, v, 0.5, k)
            want = REF.dgc_select(xs, u, v, 0.5, k)
            assert [bits(a) for a in got] == [bits(a) for a in want], k


@pytest.mark.parametrize("n", [0, 17, ONE_PASS_N + 13, 200_003])
def test_lent_outputs_get_the_same_bits_and_are_returned(kern: ModuleType, n: int) -> None:
    xs = laplace(n, 3, seed=13)
    u = np.zeros(n, F32)
    v = np.zeros(n, F32)
    lent_u, lent_v = np.full(n, np.nan, F32), np.full(n, -np.inf, F32)  # whatever they held
    for x in xs:
        for k in sorted({0, min(1, n), n // 33, n // 2, n}):
            want = kern.dgc_select(x, u, v, 0.7, k)
            got = kern.dgc_select(x, u, v, 0.7, k, momentum_out=lent_u, residual_out=lent_v)
            assert got[2] is lent_u and got[3] is lent_v
            assert [bits(a) for a in got] == [bits(a) for a in want]
            one = kern.dgc_select(x, u, v, 0.7, k, residual_out=np.empty(n, F32))
            assert [bits(a) for a in one] == [bits(a) for a in want]
        u, v = want[2], want[3]


def placed(n: int, offset: int, base: int | None = None) -> np.ndarray:
    """n zeros starting ``offset`` bytes past a 4 KiB boundary (or past ``base`` modulo 4 KiB)."""
    raw = np.zeros(n + 2048, F32)
    start = raw.__array_interface__["data"][0]
    want = offset if base is None else base + offset
    skip = (want - start) % 4096
    assert skip % 4 == 0
    return raw[skip // 4 : skip // 4 + n]


# From 2**20 values the C++ pass may write its outputs by non-temporal stores (x86), depending on
# where they lie: 16-byte aligned ones, unless two of them sit just after an input modulo 4 KiB.
# Each placement here must give the NumPy twin's bits, whichever stores it takes.
@pytest.mark.parametrize(("out_u", "out_v"), [(0, 2048), (4, 2052), (16, 16), (16, 1040), (64, 3008)])
def test_large_lent_outputs_anywhere_get_the_same_bits(kern: ModuleType, out_u: int, out_v: int) -> None:
    n = (1 << 20) + 37
    x = placed(n, 0)
    x[:] = laplace(n, 1, seed=21)[0]
    base = x.__array_interface__["data"][0]
    u = placed(n, 512, base)
    v = placed(n, 1536, base)
    u[:] = x * F32(0.25)
    v[:] = x[::-1]
    lent_u, lent_v = placed(n, out_u, base), placed(n, out_v, base)
    for k in (n // 33, n // 4):
        want = REF.dgc_select(x, u, v, 0.5, k)
        lent_u.fill(np.nan)
        lent_v.fill(np.nan)
        got = kern.dgc_select(x, u, v, 0.5, k, momentum_out=lent_u, residual_out=lent_v)
        assert [bits(a) for a in got] == [bits(a) for a in want]
        r_want = REF.topk_ef(x, k, v)
        r_got = kern.topk_ef(x, k, v, residual_out=lent_v)
        assert [bits(a) for a in r_got] == [bits(a) for a in r_want]


BAD_OUT: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"momentum_out": np.zeros(4)}, TypeError, "momentum_out"),
    ({"residual_out": [0.0] * 4}, TypeError, "residual_out"),
    ({"momentum_out": z(5)}, ValueError, "momentum_out must have the size"),
    ({"residual_out": z(8)[::2]}, ValueError, "C-contiguous"),
    ({"residual_out": np.frombuffer(bytes(16), F32)}, ValueError, "residual_out must be writable"),
]


@pytest.mark.parametrize(("kw", "exc", "words"), BAD_OUT)
def test_bad_lent_outputs_are_refused(
    kern: ModuleType, kw: dict[str, Any], exc: type[Exception], words: str
) -> None:
    with pytest.raises(exc, match=words):
        kern.dgc_select(z(), z(), z(), 0.5, 1, **kw)


def test_lent_outputs_must_not_overlap_an_input_or_each_other(kern: ModuleType) -> None:
    buf = np.zeros(12, F32)
    x, u, v = buf[:4], buf[4:8], buf[8:]
    for kw in (
        {"momentum_out": x},
        {"momentum_out": v},
        {"residual_out": u},
        {"residual_out": buf[6:10]},  # part of u and part of v
        {"momentum_out": (w := z()), "residual_out": w},
    ):
        with pytest.raises(ValueError, match="must not overlap"):
            kern.dgc_select(x, u, v, 0.5, 1, **kw)
    kern.dgc_select(x, u, v, 0.5, 1, momentum_out=z(), residual_out=z())  # apart: fine


def test_a_failed_call_leaves_the_inputs_and_only_spoils_the_lent_outputs(kern: ModuleType) -> None:
    n = ONE_PASS_N * 2
    rng = np.random.default_rng(14)
    x, u, v = (rng.standard_normal(n).astype(F32) for _ in range(3))
    x[n - 3] = np.inf
    before = [bits(a) for a in (x, u, v)]
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        kern.dgc_select(x, u, v, 0.5, 100, momentum_out=np.empty(n, F32), residual_out=np.empty(n, F32))
    assert [bits(a) for a in (x, u, v)] == before
