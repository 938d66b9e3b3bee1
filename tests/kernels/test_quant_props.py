"""Property tests (hypothesis) of the quantization family over shapes and values, both backends."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

F32 = np.float32
EPS = 2.0**-23

# No example database: tests must not write into the repository.
SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Finite float32 values of every magnitude class: zeros, subnormals, ~1e-38, ordinary, up to 2**126
# (8.5e37; wider ranges overflow max - min, which test_quantize_rejects_any_nan_or_inf covers).
finite = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-(2.0**126), max_value=2.0**126)
shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=40)


def arrays(elements: st.SearchStrategy[float] = finite) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(F32, shapes, elements=elements)


@SETTINGS
@given(data=st.data(), bits=st.integers(1, 8))
def test_pack_round_trip(kern: ModuleType, data: st.DataObject, bits: int) -> None:
    s = data.draw(hnp.arrays(np.uint8, shapes, elements=st.integers(0, (1 << bits) - 1)))
    packed = kern.pack_bits(s, bits)
    assert packed.size == (s.size * bits + 7) // 8
    np.testing.assert_array_equal(kern.unpack_bits(packed, s.size, bits), s.ravel())


@SETTINGS
@given(
    x=arrays(),
    bits=st.integers(1, 8),
    bucket=st.integers(1, 70),
    stochastic=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
)
def test_quantize_bound(
    kern: ModuleType, x: np.ndarray, bits: int, bucket: int, stochastic: bool, seed: int
) -> None:
    flat = x.ravel().astype(np.float64)
    starts = np.arange(0, flat.size, bucket)
    if flat.size:
        mn = np.repeat(np.minimum.reduceat(flat, starts), bucket)[: flat.size]
        rg = np.repeat(np.maximum.reduceat(flat, starts), bucket)[: flat.size] - mn
    else:
        mn = rg = flat
    packed, lo, step = kern.quantize(x, bits, bucket, stochastic, seed)
    x_hat = kern.dequantize(packed, lo, step, x.size, bits, bucket).astype(np.float64)
    step_e = np.repeat(step.astype(np.float64), bucket)[: flat.size]
    err = np.abs(flat - x_hat)
    # float32 roundings, plus step's own rounding in the subnormal range (half a unit of 2**-149,
    # times up to 2**bits - 1 levels)
    slack = 4 * EPS * (np.abs(mn) + np.abs(flat) + rg) + ((1 << bits) + 4) * 2.0**-149
    limit = np.where(step_e == 0, rg, step_e if stochastic else step_e / 2) + slack
    assert (err <= limit).all()
    assert np.isfinite(x_hat).all()


@SETTINGS
@given(x=arrays(st.floats(width=32)), bits=st.integers(1, 8))
def test_quantize_rejects_any_nan_or_inf(kern: ModuleType, x: np.ndarray, bits: int) -> None:
    bad = not np.isfinite(x).all()
    try:
        kern.quantize(x, bits, 16)
    except ValueError:
        # non-finite, or a range or top level past float32's limit
        assert bad or float(np.abs(x).max()) > 1.7e38 or float(np.ptp(x.astype(np.float64))) > 3.4e38
    else:
        assert not bad
        assert np.isfinite(kern.dequantize(*kern.quantize(x, bits, 16), x.size, bits, 16)).all()


@SETTINGS
@given(x=arrays(st.floats(width=32)))
def test_casts(kern: ModuleType, x: np.ndarray) -> None:
    h = kern.to_float16(x)
    b = kern.to_bfloat16(x)
    nan = np.isnan(x.ravel())
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(h[~nan], x.ravel()[~nan].astype(np.float16).view(np.uint16))
    assert np.isnan(kern.from_float16(h)[nan]).all() and np.isnan(kern.from_bfloat16(b)[nan]).all()
    # representable values survive a round trip bit for bit
    f16 = kern.from_float16(h)
    np.testing.assert_array_equal(kern.to_float16(f16)[~nan], h[~nan])
    bf = kern.from_bfloat16(b)
    np.testing.assert_array_equal(kern.to_bfloat16(bf)[~nan], b[~nan])


@SETTINGS
@given(x=arrays(st.floats(width=32, min_value=-(2.0**100), max_value=2.0**100)), data=st.data())
def test_topk_and_delta_coding(kern: ModuleType, x: np.ndarray, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, x.size))
    moderate = st.floats(width=32, min_value=-(2.0**100), max_value=2.0**100)
    residual = data.draw(hnp.arrays(F32, x.shape, elements=moderate))
    acc = (x + residual).ravel()
    idx, vals = kern.topk(x, k, residual)
    order = np.lexsort((np.arange(acc.size), -np.abs(acc)))
    np.testing.assert_array_equal(idx, np.sort(order[:k]).astype(np.uint32))
    np.testing.assert_array_equal(vals, acc[idx])
    sent = np.zeros_like(acc)
    sent[idx] = vals
    np.testing.assert_array_equal(sent + residual.ravel(), acc)
    buf = kern.delta_encode_indices(idx)
    np.testing.assert_array_equal(kern.delta_decode_indices(buf, k), idx)


@SETTINGS
@given(idx=st.lists(st.integers(0, 2**32 - 1), unique=True, max_size=60))
def test_delta_round_trip_full_range(kern: ModuleType, idx: list[int]) -> None:
    a = np.array(sorted(idx), np.uint32)
    buf = kern.delta_encode_indices(a)
    np.testing.assert_array_equal(kern.delta_decode_indices(buf, a.size), a)
    if buf.size:  # a cut buffer is always refused, never misread
        try:
            kern.delta_decode_indices(buf[:-1], a.size)
            raise AssertionError("truncated buffer accepted")
        except ValueError:
            pass


@SETTINGS
@given(x=arrays(st.floats(width=32, min_value=-(2.0**100), max_value=2.0**100)))
def test_sign_properties(kern: ModuleType, x: np.ndarray) -> None:
    residual = np.zeros(x.shape, F32)
    packed, scale = kern.sign_encode(x, residual)
    flat = x.ravel()
    assert scale >= 0 and np.isfinite(scale)
    np.testing.assert_array_equal(kern.unpack_bits(packed, flat.size, 1), flat >= 0)
    dec = kern.sign_decode(packed, flat.size, scale)
    # the sign survives even when the mean of tiny values rounds to a zero scale (-0.0 then)
    np.testing.assert_array_equal(np.signbit(dec), flat < 0)
    np.testing.assert_array_equal(np.abs(dec), np.float32(scale))
    np.testing.assert_array_equal(residual.ravel(), flat - dec)
