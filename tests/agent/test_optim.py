"""The host-side optimizers: ONNX Runtime training's AdamW (adam_mode 1) and SGD, in place."""

from __future__ import annotations

import numpy as np
import pytest
from orbitfl.agent.optim import SGD, SQ_BETA, AdamW


def adamw_reference(p, grads, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.0):  # type: ignore[no-untyped-def]
    """float64, written from ORT's AdamWOptimizer kernel (adam_mode 1, correct_bias 1)."""
    p = p.astype(np.float64)
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        if wd:
            p = p - lr * wd * p
    return p, m, v


@pytest.mark.parametrize("numpy", [False, True], ids=["kernel", "numpy"])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_adamw_matches_the_float64_reference(wd: float, numpy: bool) -> None:
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(1000).astype(np.float32)
    grads = [rng.standard_normal(1000).astype(np.float32) for _ in range(30)]
    opt = AdamW(1000, weight_decay=wd, numpy=numpy)
    p = p0.copy()
    buf = p  # updated in place: the same buffer, no new array
    for g in grads:
        opt.step(p, g, 1e-2)
    assert p is buf and opt.step_count == 30
    ref_p, ref_m, ref_v = adamw_reference(p0, grads, 1e-2, wd=wd)
    np.testing.assert_allclose(p, ref_p, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(opt.m, ref_m, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(opt.v, ref_v, rtol=1e-5, atol=1e-9)
    opt.reset()
    assert opt.step_count == 0 and not opt.m.any() and not opt.v.any()


@pytest.mark.parametrize("numpy", [False, True], ids=["kernel", "numpy"])
def test_sgd_steps_and_tracks_the_squared_gradient_substitute(numpy: bool) -> None:
    rng = np.random.default_rng(1)
    p = rng.standard_normal(64).astype(np.float32)
    p0 = p.astype(np.float64)
    opt = SGD(64, numpy=numpy)
    assert not opt.second_moment().any()
    sq = np.zeros(64)
    for _ in range(5):
        g = rng.standard_normal(64).astype(np.float32)
        opt.step(p, g, 0.1)
        p0 -= 0.1 * g
        sq = SQ_BETA * sq + (1 - SQ_BETA) * g.astype(np.float64) ** 2
    np.testing.assert_allclose(p, p0, atol=1e-6)
    np.testing.assert_allclose(opt.second_moment(), sq / (1 - SQ_BETA**5), rtol=1e-4)
    assert opt.second_moment().dtype == np.float32


def test_bad_hyper_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match=r"beta1"):
        AdamW(4, beta1=1.0)
    with pytest.raises(ValueError, match=r"eps"):
        AdamW(4, eps=0.0)
    with pytest.raises(ValueError, match=r"weight_decay"):
        AdamW(4, weight_decay=-1.0)


def test_the_kernel_refuses_arrays_it_cannot_update_in_place() -> None:
    from orbitfl import _core

    p, g, m, v = (np.zeros(8, np.float32) for _ in range(4))
    assert _core.optim_simd() in ("avx512", "avx2", "generic")
    with pytest.raises(TypeError, match=r"g must have dtype float32, got float64"):
        _core.adamw_step(p, g.astype(np.float64), m, v, 0.9, 0.999, 0.1, 0.001, 1e-3, 1e-6, 1.0)
    with pytest.raises(ValueError, match=r"v has 4 values, p has 8"):
        _core.adamw_step(p, g, m, v[:4], 0.9, 0.999, 0.1, 0.001, 1e-3, 1e-6, 1.0)
    with pytest.raises(ValueError, match=r"C-contiguous"):
        _core.sgd_step(np.zeros(16, np.float32)[::2], g, m, 0.1, 0.999)
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"p must be writeable"):
        _core.sgd_step(ro, g, m, 0.1, 0.999)


@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_the_kernel_and_the_numpy_reference_agree_bit_for_bit(wd: float) -> None:
    rng = np.random.default_rng(2)
    p1 = rng.standard_normal(5000).astype(np.float32)
    p2 = p1.copy()
    k, r = AdamW(5000, weight_decay=wd), AdamW(5000, weight_decay=wd, numpy=True)
    for _ in range(10):
        g = rng.standard_normal(5000).astype(np.float32)
        k.step(p1, g, 3e-3)
        r.step(p2, g, 3e-3)
    assert p1.tobytes() == p2.tobytes()
    assert k.m.tobytes() == r.m.tobytes() and k.v.tobytes() == r.v.tobytes()
