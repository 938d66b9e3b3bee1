"""FedBuff: applies after exactly K updates, weights by staleness, refuses too-stale updates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orbitfl.ground.strategies import FedAvg, make_strategy
from orbitfl.ground.strategies.blocksums import StaleUpdate
from orbitfl.ground.strategies.fedbuff import BufferFull, FedBuff
from orbitfl.ground.strategies.staleness import Staleness


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.standard_normal((6, 4)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
    }


@pytest.mark.parametrize("weighting", ["samples", "uniform"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fedbuff_equals_brute_force(weighting: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = _model(rng)
    k, lr = 5, 0.8
    s = FedBuff(buffer_size=k, server_lr=lr, max_staleness=6, weighting=weighting)
    s.reset(g)
    ups = []
    for _ in range(k):
        d = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in g.items()}
        ups.append((d, int(rng.integers(1, 100)), int(rng.integers(0, 7))))
    for i, (d, n, tau) in enumerate(ups):
        assert not s.ready, f"ready after {i} of K={k}"
        s.accumulate(d, n, tau)
    assert s.ready
    new = s.finalize(g)
    for name in g:
        num = sum(
            (n if weighting == "samples" else 1) / math.sqrt(1 + tau) * d[name].astype(np.float64)
            for d, n, tau in ups
        )
        den = sum(n for _, n, _ in ups) if weighting == "samples" else k
        want = (g[name].astype(np.float64) + lr * num / den).astype(np.float32)
        np.testing.assert_allclose(new[name], want, rtol=1e-6, atol=1e-6)


def test_applies_after_exactly_k_and_a_full_buffer_refuses_more() -> None:
    g = {"w": np.zeros(3, np.float32)}
    s = FedBuff(buffer_size=3)
    s.reset(g)
    for _ in range(3):
        s.accumulate({"w": np.ones(3, np.float32)}, 1)
    with pytest.raises(BufferFull, match="K=3"):
        s.accumulate({"w": np.ones(3, np.float32)}, 1)
    assert s.updates == 3
    np.testing.assert_allclose(s.finalize(g)["w"], np.ones(3))


def test_stale_updates_take_smaller_steps_and_fresh_ones_equal_fedavg() -> None:
    rng = np.random.default_rng(3)
    g = _model(rng)
    d = {n: np.ones(v.shape, np.float32) for n, v in g.items()}
    steps = []
    for tau in (0, 1, 3, 8):
        s = FedBuff(buffer_size=1, max_staleness=8)
        s.reset(g)
        s.accumulate(d, 10, tau)
        steps.append(float((s.finalize(g)["b"] - g["b"]).mean()))
    assert steps == pytest.approx([1.0, 1 / math.sqrt(2), 0.5, 1 / 3], rel=1e-6)
    # all fresh, server_lr 1: plain FedAvg
    f, b = FedAvg(), FedBuff(buffer_size=4)
    f.reset(g)
    b.reset(g)
    for _ in range(4):
        d = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in g.items()}
        f.accumulate(d, 7)
        b.accumulate(d, 7)
    fn, bn = f.finalize(g), b.finalize(g)
    for n in g:
        np.testing.assert_allclose(fn[n], bn[n], rtol=1e-6, atol=1e-7)


def test_too_stale_is_refused_with_a_reason_and_not_folded() -> None:
    g = {"w": np.zeros(2, np.float32)}
    s = FedBuff(buffer_size=2, max_staleness=3)
    s.reset(g)
    assert s.refusal(3) is None
    why = s.refusal(4)
    assert why is not None and "4 versions stale" in why and "at most 3" in why
    with pytest.raises(StaleUpdate, match="at most 3"):
        s.accumulate({"w": np.ones(2, np.float32)}, 5, staleness=4)
    assert s.updates == 0
    s.accumulate({"w": np.ones(2, np.float32)}, 5, staleness=3)
    assert s.updates == 1


def test_state_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(4)
    g = _model(rng)
    ups = [
        (
            {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in g.items()},
            int(rng.integers(1, 9)),
            i % 3,
        )
        for i in range(6)
    ]
    whole = make_strategy("fedbuff", buffer_size=6, server_lr=0.5)
    whole.reset(g)
    for u in ups:
        whole.accumulate(*u)
    first = make_strategy("fedbuff", buffer_size=6, server_lr=0.5)
    first.reset(g)
    for u in ups[:4]:
        first.accumulate(*u)
    arrays, scalars = first.state()
    arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
    second = make_strategy("fedbuff", buffer_size=6, server_lr=0.5)
    second.reset(g)
    second.load_state(arrays, scalars)
    for u in ups[4:]:
        second.accumulate(*u)
    a, b = whole.finalize(g), second.finalize(g)
    for n in g:
        np.testing.assert_array_equal(a[n], b[n])


def test_staleness_functions_and_bad_options() -> None:
    assert Staleness("poly", 0.5)(3) == pytest.approx(0.5)
    assert Staleness("poly", 1.0)(3) == pytest.approx(0.25)
    assert Staleness("constant")(100) == 1.0
    h = Staleness("hinge", a=2.0, b=1)
    assert (h(0), h(1), h(3)) == (1.0, 1.0, pytest.approx(1 / 5))
    with pytest.raises(ValueError, match="staleness kind"):
        Staleness("exp")
    with pytest.raises(ValueError, match="buffer_size"):
        FedBuff(buffer_size=0)
    with pytest.raises(ValueError, match="weighting"):
        FedBuff(weighting="loss")
    with pytest.raises(ValueError, match="max_staleness"):
        FedBuff(max_staleness=-1)
    with pytest.raises(ValueError, match="unknown strategy"):
        make_strategy("fedbuf")
