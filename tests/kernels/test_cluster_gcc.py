"""GCC, gradient compression via centroid, with error feedback; both backends."""

from __future__ import annotations

import math
import threading
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from orbitfl.kernels import backend, ref_cluster

CPP = backend("cpp")
REF = backend("numpy")


def grads(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g: np.ndarray = (rng.laplace(0, 1e-3, n) + rng.choice([-5e-3, 0, 5e-3], n)).astype(np.float32)
    return g


def unpack_mask(kern: ModuleType, mask: np.ndarray, n: int) -> np.ndarray:
    m: np.ndarray = kern.unpack_bits(mask, n, 1).astype(bool)
    return m


@pytest.mark.parametrize(
    ("n", "k", "rho"), [(1000, 16, 0.5), (4097, 4, 0.9), (513, 256, 0.25), (100, 2, 1.0)]
)
def test_encoding_contract(kern: ModuleType, n: int, k: int, rho: float) -> None:
    x = grads(n, n)
    residual = grads(n, n + 1) * 0.1
    acc = x + residual
    c, mask, ids, exact = kern.gcc_encode(x, k, rho, residual)
    assert c.shape == (k,) and (np.diff(c) >= 0).all()
    rep = unpack_mask(kern, mask, n)
    assert int(rep.sum()) == math.floor(rho * n)
    bits = max(1, math.ceil(math.log2(k)))
    assert ids.size == (int(rep.sum()) * bits + 7) // 8
    # the exact values are acc itself, bit for bit, in index order
    assert exact.tobytes() == acc[~rep].tobytes()
    # replaced values are the ones nearest their (nearest) centroid
    dist = np.abs(acc.astype(np.float64)[:, None] - c.astype(np.float64)[None, :]).min(axis=1)
    if rep.any() and (~rep).any():
        assert dist[rep].max() <= dist[~rep].min()
    out = kern.gcc_decode(c, mask, ids, exact, n)
    labels = kern.unpack_bits(ids, int(rep.sum()), bits)
    np.testing.assert_array_equal(out[rep], c[labels])
    np.testing.assert_array_equal(np.abs(out[rep].astype(np.float64) - acc[rep]), dist[rep])
    # error feedback: residual = acc - decoded, computed in float32; zero where sent exactly
    assert residual.tobytes() == (acc - out).tobytes()
    assert (residual[~rep] == 0).all()
    scale = np.maximum(np.abs(acc), np.abs(out)).astype(np.float64)
    assert (np.abs(out.astype(np.float64) + residual - acc) <= scale * 2**-23).all()


def test_rho_extremes_and_no_residual(kern: ModuleType) -> None:
    x = grads(777, 2)
    c, mask, ids, exact = kern.gcc_encode(x, 8, 0.0)
    assert not unpack_mask(kern, mask, x.size).any() and ids.size == 0
    np.testing.assert_array_equal(kern.gcc_decode(c, mask, ids, exact, x.size), x)
    c, mask, ids, exact = kern.gcc_encode(x, 8, 1.0)
    assert unpack_mask(kern, mask, x.size).all() and exact.size == 0
    out = kern.gcc_decode(c, mask, ids, exact, x.size)
    assert set(out.tolist()) <= set(c.tolist())


def test_error_feedback_loses_nothing_over_rounds(kern: ModuleType) -> None:
    rng = np.random.default_rng(4)
    residual = np.zeros(2000, np.float32)
    sent = np.zeros(2000, np.float64)
    total = np.zeros(2000, np.float64)
    for t in range(20):
        x = grads(2000, 100 + t) * rng.uniform(0.5, 2)
        total += x
        c, mask, ids, exact = kern.gcc_encode(x, 16, 0.5, residual)
        sent += kern.gcc_decode(c, mask, ids, exact, x.size)
    # everything not yet delivered is in the residual (up to float32 rounding of the sums)
    np.testing.assert_allclose(sent + residual, total, rtol=0, atol=1e-6)


def test_edge_inputs(kern: ModuleType) -> None:
    c, mask, ids, exact = kern.gcc_encode(np.zeros(0, np.float32), 16, 0.5, np.zeros(0, np.float32))
    assert c.size == mask.size == ids.size == exact.size == 0
    assert kern.gcc_decode(c, mask, ids, exact, 0).size == 0
    one = np.array([0.5], np.float32)
    c, mask, ids, exact = kern.gcc_encode(one, 16, 1.0)
    assert c.tolist() == [0.5]
    np.testing.assert_array_equal(kern.gcc_decode(c, mask, ids, exact, 1), one)
    same = np.full(300, -2e-3, np.float32)
    res = np.zeros(300, np.float32)
    c, mask, ids, exact = kern.gcc_encode(same, 16, 0.5, res)
    np.testing.assert_array_equal(kern.gcc_decode(c, mask, ids, exact, 300), same)
    assert (res == 0).all()
    small = grads(5, 1)  # fewer values than centroids: k shrinks to n
    c, mask, ids, exact = kern.gcc_encode(small, 16, 0.6)
    assert c.size == 5
    np.testing.assert_array_equal(kern.gcc_decode(c, mask, ids, exact, 5), small)


@pytest.mark.parametrize("scale", [1e-40, 1e-20, 1e20, 1e38])
def test_huge_and_tiny_magnitudes(kern: ModuleType, scale: float) -> None:
    x = (grads(1000, 3).astype(np.float64) * scale * 100).astype(np.float32)
    res = np.zeros_like(x)
    c, mask, ids, exact = kern.gcc_encode(x, 16, 0.5, res)
    out = kern.gcc_decode(c, mask, ids, exact, x.size)
    assert np.isfinite(out).all() and np.isfinite(res).all()
    assert res.tobytes() == (x - out).tobytes()


def test_one_million_values(kern: ModuleType) -> None:
    x = grads(1_000_000, 8)
    res = np.zeros_like(x)
    c, mask, ids, exact = kern.gcc_encode(x, 16, 0.5, res)
    assert exact.size == 500_000 and ids.size == 250_000
    out = kern.gcc_decode(c, mask, ids, exact, x.size)
    assert np.linalg.norm(res) < 0.2 * np.linalg.norm(x)
    assert res.tobytes() == (x - out).tobytes()


def test_concurrent_calls_give_the_sequential_results() -> None:
    xs = [grads(200_000, s) for s in range(6)]
    want = [CPP.gcc_encode(x, 16, 0.5) for x in xs]
    got: list[Any] = [None] * len(xs)

    def work(i: int) -> None:
        got[i] = CPP.gcc_encode(xs[i], 16, 0.5)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want, strict=True):
        assert all(a.tobytes() == b.tobytes() for a, b in zip(g, w, strict=True))


@settings(max_examples=120, deadline=None, database=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.integers(0, 300),
        elements=st.one_of(
            st.floats(-1e6, 1e6, width=32),
            st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0]),
        ),
    ),
    k=st.integers(1, 40),
    rho=st.floats(0, 1),
    method=st.sampled_from(["optimal", "hist", "lloyd"]),
    with_residual=st.booleans(),
)
def test_cpp_and_numpy_agree_bit_for_bit(
    x: np.ndarray, k: int, rho: float, method: str, with_residual: bool
) -> None:
    r1 = (x[::-1] * np.float32(0.25)).copy() if with_residual else None
    r2 = None if r1 is None else r1.copy()
    if r1 is not None and r2 is not None:
        with np.errstate(over="ignore"):
            overflows = not np.isfinite(x + r1).all()
        if overflows:  # x + residual beyond float32: the same error from both, residuals untouched
            for kern, r in ((CPP, r1), (REF, r2)):
                with pytest.raises(ValueError, match=r"x \+ residual contains NaN or Inf"):
                    kern.gcc_encode(x, k, rho, r, 10, 7, method)
            assert r1.tobytes() == r2.tobytes() == (x[::-1] * np.float32(0.25)).tobytes()
            return
    a = CPP.gcc_encode(x, k, rho, r1, 10, 7, method)
    b = REF.gcc_encode(x, k, rho, r2, 10, 7, method)
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b, strict=True))
    if r1 is not None and r2 is not None:
        assert r1.tobytes() == r2.tobytes()
    assert CPP.gcc_decode(*a, x.size).tobytes() == REF.gcc_decode(*a, x.size).tobytes()


X = np.linspace(-1, 1, 64, dtype=np.float32)
ENC = backend("numpy").gcc_encode(X, 4, 0.5)
C_, M_, I_, E_ = ENC


def misaligned(a: np.ndarray) -> np.ndarray:
    view = np.frombuffer(b"\0" + a.tobytes(), dtype=a.dtype, offset=1)
    assert not view.flags.aligned
    return view


def test_misaligned_views_are_value_errors(kern: ModuleType) -> None:
    with pytest.raises(ValueError, match="x must be aligned to 4 bytes"):
        kern.gcc_encode(misaligned(X), 4, 0.5)
    with pytest.raises(ValueError, match="residual must be aligned to 4 bytes"):
        kern.gcc_encode(X, 4, 0.5, np.frombuffer(bytearray(4 * X.size + 1), np.float32, offset=1))
    with pytest.raises(ValueError, match="centroids must be aligned"):
        kern.gcc_decode(misaligned(C_), M_, I_, E_, X.size)
    with pytest.raises(ValueError, match="exact must be aligned"):
        kern.gcc_decode(C_, M_, I_, misaligned(E_), X.size)
    # uint8 buffers have no alignment to break
    odd_mask = np.frombuffer(b"\0" + M_.tobytes(), np.uint8, offset=1)
    odd_ids = np.frombuffer(b"\0" + I_.tobytes(), np.uint8, offset=1)
    assert (
        kern.gcc_decode(C_, odd_mask, odd_ids, E_, X.size).tobytes()
        == kern.gcc_decode(*ENC, X.size).tobytes()
    )


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.gcc_encode(X.astype(np.float64)), TypeError),
        (lambda k: k.gcc_encode(X, 0), ValueError),
        (lambda k: k.gcc_encode(X, 257), ValueError),
        (lambda k: k.gcc_encode(X, 16, 1.5), ValueError),
        (lambda k: k.gcc_encode(X, 16, -0.1), ValueError),
        (lambda k: k.gcc_encode(X, 16, float("nan")), ValueError),
        (lambda k: k.gcc_encode(X, 16, "half"), TypeError),
        (lambda k: k.gcc_encode(X, 16, 0.5, np.zeros(64, np.float64)), TypeError),
        (lambda k: k.gcc_encode(X, 16, 0.5, np.zeros(63, np.float32)), ValueError),
        (lambda k: k.gcc_encode(X, 16, 0.5, np.zeros((64, 2), np.float32)[:, 0]), ValueError),
        (lambda k: k.gcc_encode(X, 16, 0.5, np.zeros(64, np.float32), -1), ValueError),
        (lambda k: k.gcc_encode(X, 16, 0.5, None, 5, -3), ValueError),
        (lambda k: k.gcc_encode(X, 16, 0.5, None, 5, 0, "best"), ValueError),
        (lambda k: k.gcc_encode(np.array([1, np.nan], np.float32)), ValueError),
        (lambda k: k.gcc_encode(X, 4, 0.5, np.full(64, np.inf, np.float32)), ValueError),
        (
            lambda k: k.gcc_encode(np.full(4, 3e38, np.float32), 2, 0.5, np.full(4, 3e38, np.float32)),
            ValueError,
        ),
        (lambda k: k.gcc_decode(C_, M_[:3], I_, E_, 64), ValueError),
        (lambda k: k.gcc_decode(C_, M_, I_[:2], E_, 64), ValueError),
        (lambda k: k.gcc_decode(C_, M_, I_, E_[:-1], 64), ValueError),
        (lambda k: k.gcc_decode(C_[:3], M_, np.full_like(I_, 0xFF), E_, 64), ValueError),
        (lambda k: k.gcc_decode(np.zeros(0, np.float32), M_, I_, E_, 64), ValueError),
        (lambda k: k.gcc_decode(np.zeros(300, np.float32), M_, I_, E_, 64), ValueError),
        (lambda k: k.gcc_decode(C_.astype(np.float64), M_, I_, E_, 64), TypeError),
        (lambda k: k.gcc_decode(C_, M_.astype(np.int8), I_, E_, 64), TypeError),
        (lambda k: k.gcc_decode(C_, M_, I_, E_, -1), ValueError),
    ],
)
def test_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


def test_read_only_residual_is_rejected_and_left_alone(kern: ModuleType) -> None:
    res = np.zeros(64, np.float32)
    res.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        kern.gcc_encode(X, 4, 0.5, res)
    res = np.zeros(64, np.float32)
    with pytest.raises(ValueError):
        kern.gcc_encode(np.where(X > 0, np.nan, X).astype(np.float32), 4, 0.5, res)
    assert (res == 0).all()


@settings(max_examples=60, deadline=None, database=None)
@given(
    x=hnp.arrays(np.float32, st.integers(1, 200), elements=st.floats(-1e3, 1e3, width=32)),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.integers(0, 10**6),
    in_residual=st.booleans(),
)
def test_nonfinite_anywhere_is_a_value_error_and_the_residual_is_kept(
    x: np.ndarray, bad: float, where: int, in_residual: bool
) -> None:
    for kern in (CPP, REF):
        xs = x.copy()
        res = np.full_like(xs, 0.5)
        (res if in_residual else xs)[where % xs.size] = bad
        before = res.tobytes()
        with pytest.raises(ValueError, match="NaN or Inf"):
            kern.gcc_encode(xs, 4, 0.5, res)
        assert res.tobytes() == before


@pytest.mark.parametrize(
    ("n", "k", "rho"),
    [
        (40_000, 16, 0.5),
        (30_001, 8, 0.3),
        (20_000, 64, 0.75),
        (9_999, 16, 1.0),
        (10_001, 16, 0.0),
        (100_003, 16, 0.5),  # 2^16 values or more: the keys counted in tables during the pass
    ],
)
def test_large_tensors_agree_bit_for_bit_with_a_residual(n: int, k: int, rho: float) -> None:
    # Large enough that k-means runs on its fixed-point grid; the one-pass split (mask bytes,
    # id and exact lists, residual) must match the twin's masks bit for bit, tails included.
    x = grads(n, seed=n)
    r1 = (grads(n, seed=n + 1) * np.float32(0.1)).astype(np.float32)
    r2 = r1.copy()
    a = CPP.gcc_encode(x, k, rho, r1, 20, 0, "hist")
    b = REF.gcc_encode(x, k, rho, r2, 20, 0, "hist")
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b, strict=True))
    assert r1.tobytes() == r2.tobytes()
    assert a[3].size == n - math.floor(rho * n)


@pytest.mark.parametrize(("n", "tiny_share"), [(70_001, 0.001), (70_001, 0.9), (5_001, 0.9), (5_001, 0.001)])
def test_values_far_below_the_centroids_agree_bit_for_bit(n: int, tiny_share: float) -> None:
    # Values below 2^-27 of a centroid (a few), or centroids below 2^-27 of the largest value
    # (most values tiny): acc - c may round in double, and the C++ keys take the double formula
    # for those blocks or the whole call. The selection must still be the twin's.
    x = grads(n, seed=n)
    tiny = np.random.default_rng(n).random(n) < tiny_share
    x[tiny] *= np.float32(1e-12)
    r1 = (grads(n, seed=n + 1) * np.float32(0.01)).astype(np.float32)
    r1[tiny] *= np.float32(1e-12)
    r2 = r1.copy()
    a = CPP.gcc_encode(x, 16, 0.5, r1, 20, 0, "hist")
    b = REF.gcc_encode(x, 16, 0.5, r2, 20, 0, "hist")
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b, strict=True))
    assert r1.tobytes() == r2.tobytes()


@pytest.mark.parametrize("method", ["optimal", "hist"])
def test_a_centroid_far_below_the_values_agrees_bit_for_bit(method: str) -> None:
    # Half the values near 1e-20, half in [1, 2): "optimal" puts a centroid at their mean (below
    # 2^-27 of max |acc|), so the C++ keys of the whole call take the double formula; "hist"
    # rounds that centroid to 0 and only the blocks of tiny values do.
    n = 3001
    rng = np.random.default_rng(n)
    u = rng.random(n).astype(np.float32)
    x = np.where(rng.random(n) < 0.5, np.float32(1e-20) * (1 + u), 1 + u).astype(np.float32)
    a = CPP.gcc_encode(x, 16, 0.5, None, 20, 0, method)
    b = REF.gcc_encode(x, 16, 0.5, None, 20, 0, method)
    assert all(u.tobytes() == v.tobytes() for u, v in zip(a, b, strict=True))
    assert 0.0 < float(a[0][0]) < 1e-19 or method == "hist"


@pytest.mark.parametrize(
    ("n", "k", "method", "outlier"),
    [
        (40_000, 16, "hist", False),
        (20_000, 64, "hist", False),
        (20_000, 16, "hist", True),
        (3_000, 5, "optimal", False),
        (5_000, 8, "lloyd", False),
    ],
)
def test_centroids_are_kmeans1ds_of_the_sum(
    kern: ModuleType, n: int, k: int, method: str, outlier: bool
) -> None:
    # One k-means: GCC's centroids are kmeans_centroids of acc = x + residual with the same
    # method, iters and seed, on the grid and, with an outlier piling the rest into one fine bin,
    # on the per-value fallback.
    x = grads(n, seed=n)
    if outlier:
        x[7] = 50.0
    res = (grads(n, seed=n + 1) * np.float32(0.1)).astype(np.float32)
    acc = x + res
    lo, hi = float(acc.min()), float(acc.max())
    assert ref_cluster._grid(acc, lo, hi, k).ok is not outlier
    c = kern.gcc_encode(x, k, 0.5, res, 20, 3, method)[0]
    assert c.tobytes() == kern.kmeans_centroids(acc, k, method, 20, 3).tobytes()
