"""Bit packing, uniform quantization, casts, top-k and sign: one suite, both backends (`kern`)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

F32 = np.float32
EPS = 2.0**-23


def bucket_stats(x: np.ndarray, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-element bucket min and range, computed independently of the kernels (float64)."""
    xd = x.astype(np.float64)
    starts = np.arange(0, x.size, bucket)
    mn = np.minimum.reduceat(xd, starts)
    rg = np.maximum.reduceat(xd, starts) - mn
    return np.repeat(mn, bucket)[: x.size], np.repeat(rg, bucket)[: x.size]


def rounding_slack(x: np.ndarray, lo: np.ndarray, rg: np.ndarray, levels: int) -> np.ndarray:
    # A few float32 roundings (x - lo, the scaling, q * step, lo + ...) on top of the exact bound,
    # plus step's own rounding in the subnormal range (half a unit of 2**-149 per level).
    slack: np.ndarray = 4 * EPS * (np.abs(lo) + np.abs(x.astype(np.float64)) + rg) + (levels + 4) * 2.0**-149
    return slack


# --- bit packing ----------------------------------------------------------------------------------
def test_pack_layout_is_lsb_first(kern: ModuleType) -> None:
    # symbols 1, 2, 3 at 2 bits: bits 0..5 = 1,0, 0,1, 1,1 -> 0b111001
    out = kern.pack_bits(np.array([1, 2, 3], np.uint8), 2)
    assert out.dtype == np.uint8
    assert out.tolist() == [0b111001]
    # 3-bit symbols straddle bytes: 7 then 5 -> bits 111 101 -> 0b101111, then 0 padding
    assert kern.pack_bits(np.array([7, 5, 1], np.uint8), 3).tolist() == [0b01101111, 0b0]
    assert kern.pack_bits(np.array([1] * 9, np.uint8), 1).tolist() == [0xFF, 0x01]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 31, 32, 33, 64, 65, 1000, 4099])
def test_pack_unpack_round_trip(kern: ModuleType, bits: int, n: int) -> None:
    rng = np.random.default_rng(n * 10 + bits)
    s = rng.integers(0, 1 << bits, n).astype(np.uint8)
    packed = kern.pack_bits(s, bits)
    assert packed.size == (n * bits + 7) // 8
    if n * bits % 8:  # padding bits of the last byte are zero
        assert int(packed[-1]) >> (n * bits % 8) == 0
    back = kern.unpack_bits(packed, n, bits)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, s)
    # trailing bytes beyond the packed size are ignored
    np.testing.assert_array_equal(kern.unpack_bits(np.append(packed, np.uint8(0xFF)), n, bits), s)


def test_pack_reads_any_shape_as_flat(kern: ModuleType) -> None:
    s = np.arange(16, dtype=np.uint8).reshape(4, 4)
    np.testing.assert_array_equal(kern.unpack_bits(kern.pack_bits(s, 4), 16, 4), s.ravel())


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.pack_bits(np.array([4], np.uint8), 2), ValueError),  # symbol >= 2**bits
        (lambda k: k.pack_bits(np.zeros(3, np.uint8), 0), ValueError),
        (lambda k: k.pack_bits(np.zeros(3, np.uint8), 9), ValueError),
        (lambda k: k.pack_bits(np.zeros(3, np.int8), 2), TypeError),
        (lambda k: k.pack_bits(np.zeros(3, np.uint16), 2), TypeError),
        (lambda k: k.pack_bits([0, 1], 2), TypeError),
        (lambda k: k.pack_bits(np.zeros(3, np.uint8), 2.0), TypeError),
        (lambda k: k.pack_bits(np.zeros(6, np.uint8)[::2], 2), ValueError),  # non-contiguous
        (lambda k: k.unpack_bits(np.zeros(2, np.uint8), 6, 3), ValueError),  # truncated: 3 needed
        (lambda k: k.unpack_bits(np.zeros(2, np.uint8), -1, 3), ValueError),
        (lambda k: k.unpack_bits(np.zeros(2, np.uint8), 1, 0), ValueError),
        (lambda k: k.unpack_bits(np.zeros(2, np.int32), 1, 3), TypeError),
    ],
)
def test_pack_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


# --- uniform quantization ---------------------------------------------------------------------------
def check_quantize(kern: ModuleType, x: np.ndarray, bits: int, bucket: int, stochastic: bool) -> None:
    n = x.size
    packed, lo, step = kern.quantize(x, bits, bucket, stochastic, 3)
    nb = -(-n // bucket)
    assert packed.dtype == np.uint8 and packed.size == (n * bits + 7) // 8
    assert lo.dtype == np.float32 and step.dtype == np.float32 and lo.size == step.size == nb
    x_hat = kern.dequantize(packed, lo, step, n, bits, bucket)
    assert x_hat.dtype == np.float32 and x_hat.size == n
    if n == 0:
        return
    mn, rg = bucket_stats(x.ravel(), bucket)
    levels = (1 << bits) - 1
    # lo is the bucket minimum exactly, step its range / levels to float32 rounding
    np.testing.assert_array_equal(lo.astype(np.float64), mn[::bucket])
    np.testing.assert_allclose(step.astype(np.float64), rg[::bucket] / levels, rtol=4 * EPS, atol=2.0**-149)
    step_e = np.repeat(step.astype(np.float64), bucket)[:n]
    err = np.abs(x.ravel().astype(np.float64) - x_hat.astype(np.float64))
    slack = rounding_slack(x.ravel(), mn, rg, levels)
    zero_step = step_e == 0  # the range underflowed: q = 0, error <= range
    if stochastic:
        assert (err[~zero_step] < step_e[~zero_step] + slack[~zero_step]).all()
    else:
        assert (err[~zero_step] <= step_e[~zero_step] / 2 + slack[~zero_step]).all()
    assert (err[zero_step] <= rg[zero_step] + slack[zero_step]).all()
    # x_hat stays inside the bucket's range, up to rounding
    assert (x_hat >= mn - slack).all() and (x_hat <= mn + rg + slack).all()


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("bucket", [1, 7, 64, 512])
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_error_bounds(kern: ModuleType, bits: int, bucket: int, stochastic: bool) -> None:
    rng = np.random.default_rng(bits * 1000 + bucket)
    x = (rng.standard_normal(3001) * np.exp(rng.uniform(-5, 5, 3001))).astype(F32)
    check_quantize(kern, x, bits, bucket, stochastic)


@pytest.mark.parametrize(
    "x",
    [
        np.zeros(0, F32),
        np.array([3.5], F32),
        np.full(1000, -2.25, F32),
        np.array([1e38, -1e38, 5e37, 0.0] * 100, F32),
        np.array([1e38, 1.0000001e38, 9.9999e37] * 50, F32),
        np.array([1e-38, -1e-38, 3e-39, 0.0] * 100, F32),
        np.array([1e-45, 3e-45, 0.0, -1e-45, 7e-45] * 100, F32),  # subnormals; steps underflow
        np.array([0.0, -0.0] * 300, F32),
        np.arange(24, dtype=F32).reshape(2, 3, 4),
    ],
    ids=["empty", "one", "constant", "huge", "huge-close", "tiny", "subnormal", "zeros", "3d"],
)
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_edge_values(kern: ModuleType, x: np.ndarray, stochastic: bool) -> None:
    for bits in (1, 4, 8):
        check_quantize(kern, x, bits, 64, stochastic)


def test_quantize_constant_and_single_buckets_are_exact(kern: ModuleType) -> None:
    x = np.array([5.0] * 10 + [-1.5] * 10, F32)
    packed, lo, step = kern.quantize(x, 3, 10)
    assert step.tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(kern.dequantize(packed, lo, step, 20, 3, 10), x)
    y = np.random.default_rng(1).standard_normal(100).astype(F32)
    packed, lo, step = kern.quantize(y, 2, 1)  # bucket 1: every value is its own minimum
    np.testing.assert_array_equal(kern.dequantize(packed, lo, step, 100, 2, 1), y)


def test_bucket_larger_than_x(kern: ModuleType) -> None:
    x = np.array([1.0, -2.0, 4.0], F32)
    packed, lo, step = kern.quantize(x, 3, 2**40)
    assert lo.tolist() == [-2.0] and step.tolist() == [float(F32(6.0) / F32(7.0))]
    x_hat = kern.dequantize(packed, lo, step, 3, 3, 2**40)
    assert np.abs(x_hat - x).max() <= 3.0 / 7.0 + 1e-6


def test_quantize_zero_min_is_positive_zero(kern: ModuleType) -> None:
    _, lo, step = kern.quantize(np.array([-0.0, 0.0, -0.0, 0.0], F32), 4, 4)
    assert np.signbit(lo).tolist() == [False] and np.signbit(step).tolist() == [False]


def test_quantize_levels_are_exact_at_grid_points(kern: ModuleType) -> None:
    # 0..15 at 4 bits: step 1, every value on the grid comes back exactly.
    x = np.tile(np.arange(16, dtype=F32), 40)
    packed, lo, step = kern.quantize(x, 4, 16)
    np.testing.assert_array_equal(kern.unpack_bits(packed, x.size, 4), x.astype(np.uint8))
    np.testing.assert_array_equal(kern.dequantize(packed, lo, step, x.size, 4, 16), x)


def test_quantize_rounds_ties_to_even(kern: ModuleType) -> None:
    # lo 0, step 1 (bits 2: 0..3): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    x = np.array([0.0, 3.0, 0.5, 1.5, 2.5, 1.25], F32)
    packed, _, _ = kern.quantize(x, 2, 6)
    assert kern.unpack_bits(packed, 6, 2).tolist() == [0, 3, 0, 2, 2, 1]


def test_stochastic_rounding_is_unbiased(kern: ModuleType) -> None:
    # One bucket [0, 1] at 1 bit: 0.3 rounds to 1 with probability 0.3. The mean of 200k draws has
    # sd sqrt(0.21 / 2e5) ~ 1e-3; a 6 sd tolerance fails for any real bias (nearest gives 0).
    n = 200_000
    x = np.full(n, 0.3, F32)
    x[0], x[1] = 0.0, 1.0
    packed, lo, step = kern.quantize(x, 1, n, stochastic=True, seed=12345)
    x_hat = kern.dequantize(packed, lo, step, n, 1, n)
    assert set(np.unique(x_hat[2:]).tolist()) == {0.0, 1.0}
    assert abs(float(x_hat[2:].astype(np.float64).mean()) - 0.3) < 6 * np.sqrt(0.21 / n)
    # per-bucket unbiasedness at 4 bits with random values: mean error is ~0 relative to step
    rng = np.random.default_rng(5)
    y = rng.uniform(-1, 1, n).astype(F32)
    p, lo, st = kern.quantize(y, 4, 256, stochastic=True, seed=7)
    err = kern.dequantize(p, lo, st, n, 4, 256).astype(np.float64) - y
    # each error has |e| < step (~2/15), so sd of the mean < 0.134 / sqrt(n)
    assert abs(err.mean()) < 6 * 0.134 / np.sqrt(n)


def test_stochastic_rounding_is_reproducible_and_seeded(kern: ModuleType) -> None:
    x = np.random.default_rng(2).standard_normal(5000).astype(F32)
    a = kern.quantize(x, 3, 128, True, 99)
    b = kern.quantize(x, 3, 128, True, 99)
    c = kern.quantize(x, 3, 128, True, 100)
    assert a[0].tobytes() == b[0].tobytes()
    assert a[0].tobytes() != c[0].tobytes()
    big = kern.quantize(x, 3, 128, True, 2**64 - 1)  # the whole seed range is accepted
    assert big[0].size == a[0].size


def test_a_million_values(kern: ModuleType) -> None:
    x = np.random.default_rng(3).standard_normal(1_000_000).astype(F32)
    check_quantize(kern, x, 4, 512, False)
    residual = np.zeros_like(x)
    idx, vals = kern.topk(x, 10_000, residual)
    assert np.abs(vals).min() >= np.abs(residual).max()
    np.testing.assert_array_equal(kern.delta_decode_indices(kern.delta_encode_indices(idx), idx.size), idx)
    packed, scale = kern.sign_encode(x)
    assert kern.unpack_bits(packed, x.size, 1).sum() == (x >= 0).sum()
    assert scale == pytest.approx(float(np.abs(x.astype(np.float64)).mean()), rel=1e-6)
    np.testing.assert_array_equal(kern.from_float16(kern.to_float16(x)), x.astype(np.float16).astype(F32))


def misaligned(a: np.ndarray) -> np.ndarray:
    view = np.frombuffer(b"\0" + a.tobytes(), dtype=a.dtype, offset=1)
    assert not view.flags.aligned
    return view


def test_misaligned_views_are_value_errors(kern: ModuleType) -> None:
    x = np.arange(64, dtype=F32)
    with pytest.raises(ValueError, match="aligned"):
        kern.quantize(misaligned(x), 4)
    with pytest.raises(ValueError, match="aligned"):
        kern.topk(x, 3, misaligned(x))
    with pytest.raises(ValueError, match="aligned"):
        kern.from_float16(misaligned(np.zeros(8, np.uint16)))
    with pytest.raises(ValueError, match="aligned"):
        kern.delta_encode_indices(misaligned(np.arange(4, dtype=np.uint32)))
    # uint8 buffers have no alignment to break
    packed = kern.pack_bits(np.ones(8, np.uint8), 1)
    assert kern.unpack_bits(np.frombuffer(b"\0" + packed.tobytes(), np.uint8, offset=1), 8, 1).sum() == 8


def test_huge_n_with_a_short_buffer_is_a_value_error(kern: ModuleType) -> None:
    # Checked before anything of size n is allocated.
    p = np.zeros(4, np.uint8)
    one = np.zeros(1, F32)
    with pytest.raises(ValueError):
        kern.unpack_bits(p, 2**40, 4)
    with pytest.raises(ValueError):
        kern.dequantize(p, one, one, 2**40, 4, 2**41)
    with pytest.raises(ValueError):
        kern.sign_decode(p, 2**40, 1.0)
    with pytest.raises(ValueError):
        kern.delta_decode_indices(p, 2**40)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.quantize(np.array([1.0, np.nan], F32), 4), ValueError),
        (lambda k: k.quantize(np.array([1.0, np.inf], F32), 4), ValueError),
        (lambda k: k.quantize(np.array([-np.inf] * 20, F32), 4), ValueError),
        (lambda k: k.quantize(np.array([1.0] * 40 + [np.nan], F32), 4, 64), ValueError),
        (lambda k: k.quantize(np.array([3e38, -3e38], F32), 4), ValueError),  # range overflows
        (lambda k: k.quantize(np.array([3.4028235e38, 0], F32), 5), ValueError),  # top level does
        (lambda k: k.quantize(np.zeros(4, F32), 0), ValueError),
        (lambda k: k.quantize(np.zeros(4, F32), 9), ValueError),
        (lambda k: k.quantize(np.zeros(4, F32), 4, 0), ValueError),
        (lambda k: k.quantize(np.zeros(4, F32), 4, -3), ValueError),
        (lambda k: k.quantize(np.zeros(4, F32), 4, 8, True, -1), ValueError),
        (lambda k: k.quantize(np.zeros(4, F32), 4, 8, True, 2**64), ValueError),
        (lambda k: k.quantize(np.zeros(4, F32), 4, 8, True, 1.5), TypeError),
        (lambda k: k.quantize(np.zeros(4, np.float64), 4), TypeError),
        (lambda k: k.quantize(np.zeros(4, np.float16), 4), TypeError),
        (lambda k: k.quantize([0.0, 1.0], 4), TypeError),
        (lambda k: k.quantize(np.zeros(4, F32), 4.0), TypeError),
        (lambda k: k.quantize(np.zeros((4, 4), F32).T, 4), ValueError),
        (lambda k: k.quantize(np.zeros(8, F32)[::2], 4), ValueError),
    ],
)
def test_quantize_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


def _quantized(kern: ModuleType) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    packed, lo, step = kern.quantize(np.arange(100, dtype=F32), 4, 32)
    return packed, lo, step


@pytest.mark.parametrize(
    ("change", "exc"),
    [
        (lambda p, lo, st: (p[:-1], lo, st, 100, 4, 32), ValueError),  # truncated packed
        (lambda p, lo, st: (p, lo[:-1], st, 100, 4, 32), ValueError),  # too few buckets
        (lambda p, lo, st: (p, lo, np.append(st, F32(1)), 100, 4, 32), ValueError),
        (lambda p, lo, st: (p, lo, st, 100, 4, 64), ValueError),  # bucket disagrees with lo size
        (lambda p, lo, st: (p, lo, -st, 100, 4, 32), ValueError),  # negative step
        (lambda p, lo, st: (p, np.full(4, np.nan, F32), st, 100, 4, 32), ValueError),
        (lambda p, lo, st: (p, lo, np.full(4, np.inf, F32), 100, 4, 32), ValueError),
        (lambda p, lo, st: (p, lo, st, -1, 4, 32), ValueError),
        (lambda p, lo, st: (p, lo, st, 100, 0, 32), ValueError),
        (lambda p, lo, st: (p, lo, st, 100, 4, 0), ValueError),
        (lambda p, lo, st: (p, lo.astype(np.float64), st, 100, 4, 32), TypeError),
        (lambda p, lo, st: (p.astype(np.int8), lo, st, 100, 4, 32), TypeError),
        (lambda p, lo, st: (p, lo, np.repeat(st, 2)[::2], 100, 4, 32), ValueError),
    ],
)
def test_dequantize_bad_arguments(kern: ModuleType, change: Any, exc: type[Exception]) -> None:
    args = change(*_quantized(kern))
    with pytest.raises(exc):
        kern.dequantize(*args)


def test_dequantize_overflow_is_inf_on_both_backends_without_a_warning(kern: ModuleType) -> None:
    # A finite step near float32's largest times the top level overflows: a corrupted payload can
    # carry one, and the decoder refuses the Inf (tests/codec); the kernel itself must not raise.
    packed = kern.pack_bits(np.array([0, 1, 15, 15, 0, 0, 0, 0], np.uint8), 4)
    lo = np.array([-3e38], F32)
    step = np.array([3e38], F32)
    out = kern.dequantize(packed, lo, step, 8, 4, 8)
    assert out[0] == F32(-3e38) and out[1] == F32(-3e38) + F32(3e38)
    assert np.isposinf(out[2]) and np.isposinf(out[3])


# --- casts ------------------------------------------------------------------------------------------
def random_float_bits(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(F32)


def test_float16_matches_numpy_for_every_non_nan_class(kern: ModuleType) -> None:
    x = np.concatenate(
        [
            random_float_bits(200_000, 1),
            np.array(
                [
                    0.0,
                    -0.0,
                    65504,
                    65519.99,
                    65520,
                    -65520,
                    1e9,
                    np.inf,
                    -np.inf,
                    6.1035156e-05,
                    6.0975552e-05,
                    5.9604645e-08,
                    2.9802322e-08,
                    2.9802326e-08,
                    1e-45,
                    3.4028235e38,
                ],
                F32,
            ),
        ]
    )
    x = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(kern.to_float16(x), want)
    assert kern.to_float16(np.array([65504, 65520, 3.4e38], F32)).tolist() == [0x7BFF, 0x7C00, 0x7C00]


def test_float16_round_trip_and_nan(kern: ModuleType) -> None:
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f = kern.from_float16(h)
    assert f.dtype == np.float32
    finite = (h & 0x7C00) != 0x7C00
    np.testing.assert_array_equal(f[finite], h[finite].view(np.float16).astype(F32))
    not_nan = ~np.isnan(f)
    np.testing.assert_array_equal(kern.to_float16(f)[not_nan], h[not_nan])  # lossless on halves
    assert np.isnan(f).sum() == 2 * 1023
    back = kern.to_float16(f[np.isnan(f)])
    assert (((back & 0x7C00) == 0x7C00) & ((back & 0x3FF) != 0)).all()  # still NaN
    assert np.isnan(kern.from_float16(kern.to_float16(np.array([np.nan, -np.nan], F32)))).all()


def test_bfloat16_rounding_overflow_and_round_trip(kern: ModuleType) -> None:
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.0, 3.4028235e38, np.inf, 0.0, -0.0], F32)
    assert kern.to_bfloat16(x).tolist() == [0x3F80, 0x3F82, 0x3F81, 0xC000, 0x7F80, 0x7F80, 0x0000, 0x8000]
    h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    f = kern.from_bfloat16(h)
    not_nan = ~np.isnan(f)
    np.testing.assert_array_equal(f.view(np.uint32)[not_nan], h[not_nan].astype(np.uint32) << 16)
    np.testing.assert_array_equal(kern.to_bfloat16(f)[not_nan], h[not_nan])
    # a NaN whose payload lives only in the dropped bits stays a NaN
    nan_low = np.array([0x7F800001], np.uint32).view(F32)
    assert np.isnan(kern.from_bfloat16(kern.to_bfloat16(nan_low))).all()
    # nearest: the error is at most half a bfloat16 ulp (2**-8 relative)
    y = random_float_bits(100_000, 2)
    y = y[np.isfinite(y) & (np.abs(y) > 1e-37) & (np.abs(y) < 1e38)]
    rel = np.abs(kern.from_bfloat16(kern.to_bfloat16(y)).astype(np.float64) / y - 1)
    assert rel.max() <= 2.0**-8


@pytest.mark.parametrize("name", ["to_float16", "to_bfloat16"])
def test_cast_from_float32_bad_arguments(kern: ModuleType, name: str) -> None:
    fn = getattr(kern, name)
    with pytest.raises(TypeError):
        fn(np.zeros(3, np.float64))
    with pytest.raises(TypeError):
        fn([1.0])
    with pytest.raises(ValueError):
        fn(np.zeros((3, 3), F32)[:, 0])
    assert fn(np.zeros(0, F32)).size == 0


@pytest.mark.parametrize("name", ["from_float16", "from_bfloat16"])
def test_cast_to_float32_bad_arguments(kern: ModuleType, name: str) -> None:
    fn = getattr(kern, name)
    with pytest.raises(TypeError):
        fn(np.zeros(3, np.float16))  # the bit patterns are uint16, not float16
    with pytest.raises(ValueError):
        fn(np.zeros(6, np.uint16)[::2])


# --- top-k --------------------------------------------------------------------------------------------
def test_topk_picks_largest_magnitudes_ties_to_lower_index(kern: ModuleType) -> None:
    x = np.array([0.5, -3.0, 2.0, -2.0, 2.0, 0.0, 1.0], F32)
    idx, vals = kern.topk(x, 3)
    assert idx.dtype == np.uint32 and vals.dtype == np.float32
    assert idx.tolist() == [1, 2, 3] and vals.tolist() == [-3.0, 2.0, -2.0]
    assert kern.topk(x, 0)[0].size == 0
    assert kern.topk(x, 7)[0].tolist() == list(range(7))


def test_topk_matches_a_full_sort(kern: ModuleType) -> None:
    rng = np.random.default_rng(4)
    ties = rng.integers(-50, 50, 20_000).astype(F32)
    sign = rng.choice([-1, 1], 20_000).astype(F32)
    # magnitudes that differ only in their lowest mantissa bits (same exponent, one top bin)
    close = (F32(1) + rng.integers(0, 3000, 20_000).astype(F32) * F32(2**-23)) * sign
    subnormal = rng.integers(0, 2000, 20_000).astype(np.uint32).view(F32) * sign
    for x in (ties, close.astype(F32), subnormal):
        for k in (1, 10, 777, 19_999):
            idx, vals = kern.topk(x, k)
            order = np.lexsort((np.arange(x.size), -np.abs(x)))
            np.testing.assert_array_equal(idx, np.sort(order[:k]))
            np.testing.assert_array_equal(vals, x[idx])


def test_topk_error_feedback(kern: ModuleType) -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal(10_000).astype(F32)
    residual = rng.standard_normal(10_000).astype(F32) * F32(0.1)
    acc = x + residual
    idx, vals = kern.topk(x, 100, residual)
    np.testing.assert_array_equal(vals, acc[idx])
    assert (residual[idx] == 0).all()
    rest = np.setdiff1d(np.arange(x.size), idx)
    np.testing.assert_array_equal(residual[rest], acc[rest])
    assert np.abs(residual).max() <= np.abs(vals).min()
    # sent + kept residual is exactly what was accumulated: nothing is lost
    sent = np.zeros_like(x)
    sent[idx] = vals
    np.testing.assert_array_equal(sent + residual, acc)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.topk(np.zeros(4, F32), 5), ValueError),
        (lambda k: k.topk(np.zeros(4, F32), -1), ValueError),
        (lambda k: k.topk(np.array([1, np.nan], F32), 1), ValueError),
        (lambda k: k.topk(np.zeros(4, F32), 1, np.array([0, 0, 0, np.inf], F32)), ValueError),
        (lambda k: k.topk(np.full(2, 3e38, F32), 1, np.full(2, 3e38, F32)), ValueError),  # overflow
        (lambda k: k.topk(np.zeros(4, F32), 1, np.zeros(3, F32)), ValueError),
        (lambda k: k.topk(np.zeros(4, F32), 1, np.zeros(4, np.float64)), TypeError),
        (lambda k: k.topk(np.zeros(4, F32), 1, np.zeros(8, F32)[::2]), ValueError),
        (lambda k: k.topk(np.zeros(4, np.float64), 1), TypeError),
        (lambda k: k.topk(np.zeros(4, F32), 1.0), TypeError),
    ],
)
def test_topk_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


def test_topk_readonly_residual_is_rejected_untouched(kern: ModuleType) -> None:
    residual = np.ones(4, F32)
    residual.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        kern.topk(np.zeros(4, F32), 1, residual)
    r = np.ones(4, F32)
    with pytest.raises(ValueError):
        kern.topk(np.array([1, 2, 3, np.nan], F32), 1, r)
    assert r.tolist() == [1, 1, 1, 1]  # an error leaves the caller's residual alone


def test_delta_coding_known_bytes_and_round_trip(kern: ModuleType) -> None:
    idx = np.array([0, 1, 200, 2**32 - 1], np.uint32)
    buf = kern.delta_encode_indices(idx)
    assert buf.dtype == np.uint8
    # gaps 1, 1, 199, 2**32 - 201
    gap = 2**32 - 1 - 200
    tail = [(gap >> (7 * j)) & 0x7F | (0x80 if j < 4 else 0) for j in range(5)]
    assert buf.tolist() == [1, 1, 0xC7, 0x01, *tail]
    np.testing.assert_array_equal(kern.delta_decode_indices(buf, 4), idx)
    assert kern.delta_encode_indices(np.zeros(0, np.uint32)).size == 0
    assert kern.delta_decode_indices(np.zeros(0, np.uint8), 0).size == 0
    rng = np.random.default_rng(8)
    many = np.sort(rng.choice(10_000_000, 100_000, replace=False)).astype(np.uint32)
    np.testing.assert_array_equal(kern.delta_decode_indices(kern.delta_encode_indices(many), many.size), many)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.delta_encode_indices(np.array([3, 3], np.uint32)), ValueError),
        (lambda k: k.delta_encode_indices(np.array([3, 2], np.uint32)), ValueError),
        (lambda k: k.delta_encode_indices(np.array([1, 2], np.int64)), TypeError),
        (lambda k: k.delta_encode_indices(np.arange(4, dtype=np.uint32)[::2]), ValueError),
        (lambda k: k.delta_decode_indices(np.array([1, 1], np.uint8), 3), ValueError),  # truncated
        (lambda k: k.delta_decode_indices(np.array([1, 0x81], np.uint8), 2), ValueError),  # cut varint
        (lambda k: k.delta_decode_indices(np.array([1, 1, 1], np.uint8), 2), ValueError),  # overlong
        (lambda k: k.delta_decode_indices(np.array([1, 0], np.uint8), 2), ValueError),  # zero gap
        (lambda k: k.delta_decode_indices(np.array([0x81, 0x00], np.uint8), 1), ValueError),
        (lambda k: k.delta_decode_indices(np.array([0x80] * 5 + [1], np.uint8), 1), ValueError),
        (lambda k: k.delta_decode_indices(np.array([0xFF] * 4 + [0x1F], np.uint8), 1), ValueError),
        (lambda k: k.delta_decode_indices(np.array([1], np.uint8), -1), ValueError),
        (lambda k: k.delta_decode_indices(np.array([1], np.int8), 1), TypeError),
    ],
)
def test_delta_coding_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


# --- sign --------------------------------------------------------------------------------------------
def test_sign_encode_decode(kern: ModuleType) -> None:
    x = np.array([1.5, -0.5, 0.0, -0.0, 2.0, -3.0, 4.0, -1.0, 0.25], F32)
    packed, scale = kern.sign_encode(x)
    assert isinstance(scale, float)
    assert packed.tolist() == [0b01011101, 0b1]  # acc >= 0 -> 1 (so -0.0 counts as positive)
    assert scale == pytest.approx(float(np.abs(x.astype(np.float64)).mean()), rel=1e-7)
    dec = kern.sign_decode(packed, x.size, scale)
    np.testing.assert_array_equal(dec, np.where(x >= 0, F32(scale), F32(-scale)))
    empty, s0 = kern.sign_encode(np.zeros(0, F32))
    assert empty.size == 0 and s0 == 0.0


def test_error_feedback_sign(kern: ModuleType) -> None:
    rng = np.random.default_rng(9)
    residual = np.zeros(50_001, F32)
    total_x = np.zeros(50_001, np.float64)
    total_sent = np.zeros(50_001, np.float64)
    for _ in range(5):
        x = rng.standard_normal(50_001).astype(F32)
        acc = x + residual
        packed, scale = kern.sign_encode(x, residual)
        sent = kern.sign_decode(packed, x.size, scale)
        np.testing.assert_array_equal(residual, acc - sent)  # residual = acc - scale * sign(acc)
        total_x += x
        total_sent += sent
    # error feedback: what was sent plus what is still owed equals everything accumulated
    np.testing.assert_allclose(total_sent + residual, total_x, atol=1e-4)
    assert scale == pytest.approx(float(np.abs(acc.astype(np.float64)).mean()), rel=1e-6)


@pytest.mark.parametrize(
    ("call", "exc"),
    [
        (lambda k: k.sign_encode(np.array([np.nan], F32)), ValueError),
        (lambda k: k.sign_encode(np.array([1.0], F32), np.array([np.inf], F32)), ValueError),
        (lambda k: k.sign_encode(np.array([3e38], F32), np.array([3e38], F32)), ValueError),
        (lambda k: k.sign_encode(np.zeros(3, F32), np.zeros(2, F32)), ValueError),
        (lambda k: k.sign_encode(np.zeros(3, F32), np.zeros(3, np.float64)), TypeError),
        (lambda k: k.sign_encode(np.zeros(3, np.int32)), TypeError),
        (lambda k: k.sign_encode(np.zeros(6, F32)[::2]), ValueError),
        (lambda k: k.sign_decode(np.zeros(1, np.uint8), 9, 1.0), ValueError),  # truncated
        (lambda k: k.sign_decode(np.zeros(1, np.uint8), -1, 1.0), ValueError),
        (lambda k: k.sign_decode(np.zeros(1, np.uint8), 8, float("nan")), ValueError),
        (lambda k: k.sign_decode(np.zeros(1, np.uint8), 8, 1e300), ValueError),  # inf as float32
        (lambda k: k.sign_decode(np.zeros(1, np.uint16), 8, 1.0), TypeError),
    ],
)
def test_sign_bad_arguments(kern: ModuleType, call: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        call(kern)


def test_sign_readonly_residual(kern: ModuleType) -> None:
    r = np.zeros(3, F32)
    r.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        kern.sign_encode(np.ones(3, F32), r)
