"""Loss-aware quantization (Hou & Kwok LAQ), both backends."""

from __future__ import annotations

import itertools
import math
import threading
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from orbitfl.kernels import backend

CPP = backend("cpp")
REF = backend("numpy")


def levels(bits: int) -> np.ndarray:
    if bits == 1:
        return np.array([-1.0, 1.0])
    nlev = 2**bits - 1
    lev: np.ndarray = -1.0 + 2.0 * np.arange(nlev) / (nlev - 1)
    return lev


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(4, n) * 0.01).astype(np.float32)
    d = (np.sqrt(rng.gamma(1.0, 1e-4, n)) + 1e-8).astype(np.float32)
    return x, d


@pytest.mark.parametrize("bits", range(1, 9))
def test_alpha_is_the_weighted_least_squares_fixed_point(kern: ModuleType, bits: int) -> None:
    x, d = data(5000, bits)
    # From alpha = max|x| the alternation can need ~1000 steps on heavy tails at 7 bits; tol=0
    # runs it until the codes stop changing, i.e. to the exact fixed point.
    packed, alpha, err = kern.laq_quantize(x, d, bits, 100_000, 0.0)
    assert err <= kern.laq_quantize(x, d, bits)[2] * (1 + 1e-12)
    assert alpha > 0 and float(np.float32(alpha)) == alpha
    codes = kern.unpack_bits(packed, x.size, bits)
    b = levels(bits)[codes]
    x64, d64 = x.astype(np.float64), d.astype(np.float64)
    assert alpha == pytest.approx(float((d64 * x64 * b).sum() / (d64 * b * b).sum()), rel=1e-5)
    # the codes are the nearest levels for that alpha
    dist = np.abs(x64[:, None] - alpha * levels(bits)[None, :])
    np.testing.assert_allclose(dist[np.arange(x.size), codes], dist.min(axis=1), rtol=1e-6, atol=1e-12)
    xhat = kern.laq_dequantize(packed, x.size, bits, alpha)
    assert xhat.dtype == np.float32
    assert err == pytest.approx(float((d64 * (x64 - xhat.astype(np.float64)) ** 2).sum()), rel=1e-9)


def test_one_bit_is_the_closed_form(kern: ModuleType) -> None:
    x, d = data(10_001, 3)
    packed, alpha, _ = kern.laq_quantize(x, d, 1)
    x64, d64 = x.astype(np.float64), d.astype(np.float64)
    want = float((d64 * np.abs(x64)).sum() / d64.sum())
    assert alpha == float(np.float32(want)) or alpha == pytest.approx(want, rel=1e-7)
    np.testing.assert_array_equal(kern.unpack_bits(packed, x.size, 1), (x >= 0).astype(np.uint8))


def test_error_decreases_with_bits(kern: ModuleType) -> None:
    x, d = data(20_000, 4)
    errs = [kern.laq_quantize(x, d, b)[2] for b in range(1, 9)]
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
    total = float((d.astype(np.float64) * x.astype(np.float64) ** 2).sum())
    assert errs[0] < total  # one bit already beats sending nothing


def test_curvature_weight_steers_the_scale(kern: ModuleType) -> None:
    # Two groups of magnitudes; whichever carries the weight decides alpha (the "loss-aware" part).
    x = np.array([1.0] * 50 + [10.0] * 50, np.float32)
    heavy_small = np.array([100.0] * 50 + [1.0] * 50, np.float32)
    heavy_large = heavy_small[::-1].copy()
    a_small = kern.laq_quantize(x, heavy_small, 1)[1]
    a_large = kern.laq_quantize(x, heavy_large, 1)[1]
    assert a_small < 2.0 < 9.0 < a_large


def test_tolerance_and_iteration_limit(kern: ModuleType) -> None:
    x, d = data(3000, 5)
    zero_iter = kern.laq_quantize(x, d, 3, 0)
    assert zero_iter[1] == float(np.float32(np.abs(x).max()))
    converged = kern.laq_quantize(x, d, 3, 1000, 0.0)
    assert converged[2] <= kern.laq_quantize(x, d, 3, 1)[2] <= zero_iter[2]


@pytest.mark.parametrize("bits", [1, 2, 8])
def test_edge_inputs(kern: ModuleType, bits: int) -> None:
    packed, alpha, err = kern.laq_quantize(np.zeros(0, np.float32), np.zeros(0, np.float32), bits)
    assert packed.size == 0 and alpha == 0.0 and err == 0.0
    assert kern.laq_dequantize(packed, 0, bits, alpha).size == 0
    packed, alpha, err = kern.laq_quantize(np.array([-3.5], np.float32), np.array([2.0], np.float32), bits)
    assert alpha == 3.5 and err == 0.0
    np.testing.assert_array_equal(kern.laq_dequantize(packed, 1, bits, alpha), [-3.5])
    z = np.zeros(17, np.float32)
    packed, alpha, err = kern.laq_quantize(z, np.ones(17, np.float32), bits)
    assert alpha == 0.0 and err == 0.0
    np.testing.assert_array_equal(kern.laq_dequantize(packed, 17, bits, alpha), z)
    same = np.full(9, -0.25, np.float32)
    packed, alpha, err = kern.laq_quantize(same, np.ones(9, np.float32), bits)
    assert alpha == 0.25 and err == 0.0


@pytest.mark.parametrize("scale", [1e-42, 1e-30, 1.0, 1e30, 3e38])
def test_huge_and_tiny_magnitudes(kern: ModuleType, scale: float) -> None:
    rng = np.random.default_rng(1)
    x = (rng.uniform(-1, 1, 500) * scale).astype(np.float32)
    d = (rng.uniform(0.5, 2, 500) * (1e-30 if scale > 1 else 1.0)).astype(np.float32)
    for bits in (1, 4, 8):
        packed, alpha, err = kern.laq_quantize(x, d, bits)
        assert np.isfinite(alpha) and np.isfinite(err) and err >= 0
        assert np.isfinite(kern.laq_dequantize(packed, x.size, bits, alpha)).all()


def test_one_million_values(kern: ModuleType) -> None:
    x, d = data(1_000_000, 6)
    packed, alpha, _ = kern.laq_quantize(x, d, 4)
    assert packed.size == 500_000
    xhat = kern.laq_dequantize(packed, x.size, 4, alpha)
    rel = np.linalg.norm(x - xhat) / np.linalg.norm(x)
    assert rel < 0.25


def test_concurrent_calls_give_the_sequential_results() -> None:
    inputs = [data(300_000, s) for s in range(6)]
    want = [CPP.laq_quantize(x, d, 3) for x, d in inputs]
    got: list[Any] = [None] * len(inputs)

    def work(i: int) -> None:
        got[i] = CPP.laq_quantize(*inputs[i], 3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want, strict=True):
        assert g[0].tobytes() == w[0].tobytes() and g[1:] == w[1:]


FLT_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("bits", range(3, 9))
def test_a_fit_beyond_float32_is_clamped_to_the_largest_float32(kern: ModuleType, bits: int) -> None:
    # sum(d x b) / sum(d b^2) exceeds max|x| when a large value rounds to a small level b (1.2 b
    # here): the fit wants FLT_MAX * (1 + 1.2 b^2) / (1 + b^2). Hypothesis found this (alpha inf and
    # error NaN in C++, an overflow warning from NumPy's float32 cast). At 2 bits only rounding of
    # the prefix sums can get there (next test).
    step = 2.0 / (2**bits - 2)
    x = np.array([FLT_MAX, FLT_MAX * step * 1.2], np.float32)
    packed, alpha, err = kern.laq_quantize(x, np.ones(2, np.float32), bits)
    assert alpha == FLT_MAX and math.isfinite(err)
    xhat = kern.laq_dequantize(packed, 2, bits, alpha)
    assert np.isfinite(xhat).all() and xhat[0] == np.float32(FLT_MAX)
    assert err == float(((x.astype(np.float64) - xhat.astype(np.float64)) ** 2).sum())


@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_extreme_and_signed_zero_inputs_agree_bit_for_bit(bits: int) -> None:
    tiny = float(np.float32(1e-45))
    cases = [
        # hypothesis: at 2 bits the weight 2**53 swallows the 1s in the prefix sum of d, so the
        # level-1 weight comes out 0 and the fit is 2 * FLT_MAX
        ([0.0, FLT_MAX, -FLT_MAX], [9.007199e15, 1.0, 1.0]),
        ([FLT_MAX, 1.5e38], [1.0, 1.0]),
        ([FLT_MAX, -FLT_MAX, 1e-45, -1e-45, 0.0, -0.0], [1e-20, 1e20, 1.0, 1.0, 3.0, 3.0]),
        ([-0.0, 0.0, -0.0], [1.0, 2.0, 3.0]),
        ([tiny, -tiny, tiny, 0.0], [1.0, 1.0, 1.0, 1.0]),
        ([1.0, 1.0, -1.0, -1.0, 0.5], [tiny, FLT_MAX, 1.0, 1.0, 1.0]),  # ties and extreme weights
        ([2.0], [1e-45]),
    ]
    for xs, ds in cases:
        x, d = np.array(xs, np.float32), np.array(ds, np.float32)
        a = CPP.laq_quantize(x, d, bits)
        b = REF.laq_quantize(x, d, bits)
        assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1] and a[2] == b[2], (xs, ds)
        assert math.isfinite(a[1]) and abs(a[1]) <= FLT_MAX and math.isfinite(a[2])


def misaligned(a: np.ndarray) -> np.ndarray:
    view = np.frombuffer(b"\0" + a.tobytes(), dtype=a.dtype, offset=1)
    assert not view.flags.aligned
    return view


def test_misaligned_views_are_value_errors(kern: ModuleType) -> None:
    x, d = data(64)
    with pytest.raises(ValueError, match="x must be aligned to 4 bytes"):
        kern.laq_quantize(misaligned(x), d, 3)
    with pytest.raises(ValueError, match="d must be aligned to 4 bytes"):
        kern.laq_quantize(x, misaligned(d), 3)
    # uint8 buffers have no alignment to break
    packed, alpha, _ = kern.laq_quantize(x, d, 3)
    odd = np.frombuffer(b"\0" + packed.tobytes(), np.uint8, offset=1)
    assert (
        kern.laq_dequantize(odd, 64, 3, alpha).tobytes()
        == kern.laq_dequantize(packed, 64, 3, alpha).tobytes()
    )


@settings(max_examples=150, deadline=None, database=None)
@given(
    x=hnp.arrays(
        np.float32, st.integers(0, 400), elements=st.floats(allow_nan=False, allow_infinity=False, width=32)
    ),
    bits=st.integers(1, 8),
    tol=st.sampled_from([0.0, 1e-9, 1e-6, 1e-2]),
    data_=st.data(),
)
def test_cpp_and_numpy_agree_bit_for_bit(x: np.ndarray, bits: int, tol: float, data_: st.DataObject) -> None:
    d = data_.draw(
        hnp.arrays(
            np.float32,
            x.size,
            elements=st.floats(float(np.float32(1e-20)), float(np.float32(1e20)), width=32),
        )
    )
    a = CPP.laq_quantize(x, d, bits, 100, tol)
    b = REF.laq_quantize(x, d, bits, 100, tol)
    assert a[0].tobytes() == b[0].tobytes()
    assert a[1] == b[1] and a[2] == b[2]
    assert math.isfinite(a[1]) and math.isfinite(a[2])
    assert (
        CPP.laq_dequantize(a[0], x.size, bits, a[1]).tobytes()
        == REF.laq_dequantize(a[0], x.size, bits, a[1]).tobytes()
    )


X = np.ones(8, np.float32)
D = np.ones(8, np.float32)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.laq_quantize(X.astype(np.float64), D, 2), TypeError),
        (lambda k: k.laq_quantize(X, D.astype(np.float16), 2), TypeError),
        (lambda k: k.laq_quantize(X, D[:4], 2), ValueError),
        (lambda k: k.laq_quantize(np.ones((4, 4), np.float32)[:, 1], np.ones(4, np.float32), 2), ValueError),
        (lambda k: k.laq_quantize(X, D, 0), ValueError),
        (lambda k: k.laq_quantize(X, D, 9), ValueError),
        (lambda k: k.laq_quantize(X, D, 2.5), TypeError),
        (lambda k: k.laq_quantize(X, D, True), TypeError),
        (lambda k: k.laq_quantize(X, D, 2, 10, True), TypeError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.uint8), 1, 2, None), TypeError),
        (lambda k: k.laq_quantize(X, D, 2, -1), ValueError),
        (lambda k: k.laq_quantize(X, D, 2, 10, -1e-6), ValueError),
        (lambda k: k.laq_quantize(X, D, 2, 10, float("nan")), ValueError),
        (lambda k: k.laq_quantize(X, D, 2, 10, "small"), TypeError),
        (lambda k: k.laq_quantize(np.array([1, np.nan], np.float32), np.ones(2, np.float32), 2), ValueError),
        (lambda k: k.laq_quantize(np.array([1, np.inf], np.float32), np.ones(2, np.float32), 2), ValueError),
        (lambda k: k.laq_quantize(np.ones(2, np.float32), np.array([1, np.inf], np.float32), 2), ValueError),
        (lambda k: k.laq_quantize(np.ones(2, np.float32), np.array([1, 0], np.float32), 2), ValueError),
        (lambda k: k.laq_quantize(np.ones(2, np.float32), np.array([1, -1], np.float32), 2), ValueError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.uint8), 9, 1, 1.0), ValueError),
        (lambda k: k.laq_dequantize(np.full(1, 3, np.uint8), 1, 2, 1.0), ValueError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.int8), 1, 2, 1.0), TypeError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.uint8), 1, 2, float("inf")), ValueError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.uint8), 1, 2, 1e39), ValueError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.uint8), 1, 2, -1e39), ValueError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.uint8), -1, 2, 1.0), ValueError),
        (lambda k: k.laq_dequantize(np.zeros(1, np.uint8), 1, 9, 1.0), ValueError),
    ],
)
def test_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


@settings(max_examples=60, deadline=None, database=None)
@given(
    x=hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(-1e3, 1e3, width=32)),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.integers(0, 10**6),
    in_d=st.booleans(),
)
def test_nonfinite_anywhere_is_a_value_error_on_both_backends(
    x: np.ndarray, bad: float, where: int, in_d: bool
) -> None:
    d = np.ones_like(x)
    (d if in_d else x)[where % x.size] = bad
    for kern in (CPP, REF):
        with pytest.raises(ValueError, match="NaN or Inf"):
            kern.laq_quantize(x, d, 3)


@pytest.mark.parametrize("n", [0, 1, 7, 5000])
def test_laq_errors_equal_one_laq_quantize_per_width(kern: ModuleType, n: int) -> None:
    x, d = data(n, 11)
    widths = [1, 2, 3, 4, 8, 2, 0]
    alphas, errors = kern.laq_errors(x, d, widths)
    assert alphas.dtype == errors.dtype == np.float64 and alphas.size == errors.size == len(widths)
    for w, a, e in zip(widths[:-1], alphas, errors, strict=False):
        _, alpha, err = kern.laq_quantize(x, d, w)
        assert a == alpha and e == err
    # width 0: nothing sent, the whole weighted energy, summed in index order
    x64, d64 = x.astype(np.float64), d.astype(np.float64)
    assert alphas[-1] == 0.0
    assert errors[-1] == float(np.cumsum(d64 * (x64 * x64))[-1] if n else 0.0)
    assert kern.laq_errors(x, d, [])[0].size == 0


def test_laq_errors_edge_inputs_agree_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    cases = [
        (np.full(33, 0.75, np.float32), np.ones(33, np.float32)),  # all equal
        (np.zeros(9, np.float32), np.ones(9, np.float32)),
        (np.array([-0.0, 0.0, 1e-45, -1e-45], np.float32), np.ones(4, np.float32)),
        # values spread over every exponent: thousands of buckets, most with one value
        (
            (rng.standard_normal(3000) * 10.0 ** rng.integers(-30, 30, 3000)).astype(np.float32),
            rng.uniform(0.1, 10, 3000).astype(np.float32),
        ),
    ]
    for x, d in cases:
        a = CPP.laq_errors(x, d, range(9), 100, 0.0)
        b = REF.laq_errors(x, d, range(9), 100, 0.0)
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.laq_errors(X, D, "24"), TypeError),
        (lambda k: k.laq_errors(X, D, 2), TypeError),
        (lambda k: k.laq_errors(X, D, [2.0]), TypeError),
        (lambda k: k.laq_errors(X, D, [True]), TypeError),
        (lambda k: k.laq_errors(X, D, [-1]), ValueError),
        (lambda k: k.laq_errors(X, D, [9]), ValueError),
        (lambda k: k.laq_errors(X, D[:4], [2]), ValueError),
        (lambda k: k.laq_errors(X.astype(np.float64), D, [2]), TypeError),
        (lambda k: k.laq_errors(X, D, [2], -1), ValueError),
        (lambda k: k.laq_errors(np.array([1, np.nan], np.float32), np.ones(2, np.float32), [2]), ValueError),
        (lambda k: k.laq_errors(np.ones(2, np.float32), np.array([1, 0], np.float32), []), ValueError),
    ],
)
def test_laq_errors_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_large_tensors_take_the_coarse_phase_and_agree_bit_for_bit(bits: int) -> None:
    # From 2**16 values on, the fit starts with steps over whole buckets; the parity tests
    # above are too small to reach that path.
    rng = np.random.default_rng(bits)
    n = 70_000
    x = rng.laplace(0.0, 1e-3, n).astype(np.float32)
    x[::97] = 0.0
    x[1::89] = -x[2::89][: x[1::89].size]  # values and their negatives
    d = (np.abs(x) + np.abs(rng.normal(0.0, 1e-3, n)) + 1e-8).astype(np.float32)
    for max_iter, tol in ((100, 1e-6), (3, 1e-6), (1, 0.0), (2000, 0.0)):
        a = CPP.laq_quantize(x, d, bits, max_iter, tol)
        b = REF.laq_quantize(x, d, bits, max_iter, tol)
        assert a[0].tobytes() == b[0].tobytes() and a[1] == b[1] and a[2] == b[2], max_iter
    # the exact steps end on the exact fixed point: codes are the nearest levels of alpha
    packed, alpha, err = CPP.laq_quantize(x, d, bits, 100_000, 0.0)
    codes = CPP.unpack_bits(packed, n, bits)
    b64 = levels(bits)[codes]
    x64, d64 = x.astype(np.float64), d.astype(np.float64)
    assert alpha == pytest.approx(float((d64 * x64 * b64).sum() / (d64 * b64 * b64).sum()), rel=1e-5)
    # alternation is coordinate descent, so more steps never lose more than alpha's float32
    # rounding gives back
    assert err <= CPP.laq_quantize(x, d, bits, 1)[2] * (1 + 1e-3)


@pytest.mark.parametrize("n", [0, 5, 5000, 70_000])
def test_laq_quantize_at_the_alpha_laq_errors_fitted_is_laq_quantize(kern: ModuleType, n: int) -> None:
    x, d = data(n, 12)
    widths = [1, 2, 4, 7]
    alphas, errors = kern.laq_errors(x, d, widths)
    for w, a, e in zip(widths, alphas, errors, strict=True):
        want = kern.laq_quantize(x, d, w)
        got = kern.laq_quantize(x, d, w, alpha=a)
        assert got[0].tobytes() == want[0].tobytes() and got[1:] == want[1:] == (a, e)
    # any alpha: the nearest codes for it, on both backends alike
    for a in (0.0, 1e-3, 0.5, 3.4e38):
        c, r = CPP.laq_quantize(x, d, 3, alpha=a), REF.laq_quantize(x, d, 3, alpha=a)
        assert c[0].tobytes() == r[0].tobytes() and c[1:] == r[1:]


@pytest.mark.parametrize("alpha", [-1.0, float("inf"), float("nan"), 1e39])
def test_a_bad_given_alpha_is_a_value_error(kern: ModuleType, alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        kern.laq_quantize(X, D, 2, alpha=alpha)
    with pytest.raises(TypeError):
        kern.laq_quantize(X, D, 2, alpha="0.5")
