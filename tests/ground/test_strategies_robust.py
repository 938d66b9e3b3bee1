"""Robust aggregation: exact math against NumPy, and a Byzantine agent that wrecks FedAvg but not
median, trimmed mean or norm clipping."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.ground.strategies import FedAvg, Strategy, make_strategy
from orbitfl.ground.strategies.robust import CoordinateMedian, NormClip, TrimmedMean, l2_norm


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.standard_normal((8, 5)).astype(np.float32),
        "b": rng.standard_normal(5).astype(np.float32),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_median_and_trimmed_mean_equal_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = _model(rng)
    m = int(rng.integers(3, 10))
    ds = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items()} for _ in range(m)]
    ds[0].pop("b")  # a partial update: "b" is aggregated over the others only
    med, tri = CoordinateMedian(server_lr=0.9), TrimmedMean(beta=0.2)
    for s in (med, tri):
        s.reset(g)
        for d in ds:
            s.accumulate(d, int(rng.integers(1, 50)))
    nm, nt = med.finalize(g), tri.finalize(g)
    for k in g:
        st = np.stack([d[k].astype(np.float64) for d in ds if k in d])
        np.testing.assert_allclose(nm[k], (g[k] + 0.9 * np.median(st, axis=0)).astype(np.float32), rtol=1e-6)
        cut = int(np.floor(0.2 * len(st)))
        srt = np.sort(st, axis=0)
        want = g[k] + srt[cut : len(st) - cut].mean(axis=0)
        np.testing.assert_allclose(nt[k], want.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_norm_clip_equals_numpy() -> None:
    rng = np.random.default_rng(4)
    g = _model(rng)
    ds = [
        {k: (rng.standard_normal(v.shape) * rng.uniform(0.1, 5)).astype(np.float32) for k, v in g.items()}
        for _ in range(6)
    ]
    ns = [int(n) for n in rng.integers(1, 40, size=6)]
    c = float(np.median([l2_norm(d) for d in ds]))  # half the updates get clipped
    s = NormClip(max_norm=c)
    s.reset(g)
    for d, n in zip(ds, ns, strict=True):
        s.accumulate(d, n)
    new = s.finalize(g)
    factors = [min(1.0, c / np.sqrt(sum(float((d[k].astype(np.float64) ** 2).sum()) for k in d))) for d in ds]
    assert 0 < sum(f < 1 for f in factors) < 6  # the test covers clipped and unclipped updates
    for k in g:
        num = sum(f * n * d[k].astype(np.float64) for f, n, d in zip(factors, ns, ds, strict=True))
        np.testing.assert_allclose(new[k], (g[k] + num / sum(ns)).astype(np.float32), rtol=1e-6, atol=1e-6)


def _byzantine_round(strategy: Strategy, attack: float, seed: int) -> tuple[float, float]:
    """9 honest agents (mean direction + noise) and one that sends ``attack`` × its update.
    Returns (distance of the aggregate step from the honest mean, norm of the honest mean)."""
    rng = np.random.default_rng(seed)
    shape = {"w": (20, 10), "b": (10,)}
    g = {k: np.zeros(s, np.float32) for k, s in shape.items()}
    mu = {k: rng.standard_normal(s).astype(np.float32) * 0.1 for k, s in shape.items()}
    honest = [
        {k: (mu[k] + 0.02 * rng.standard_normal(s)).astype(np.float32) for k, s in shape.items()}
        for _ in range(9)
    ]
    bad = {k: (attack * honest[0][k]).astype(np.float32) for k in shape}
    strategy.reset(g)
    for d in [*honest[:5], bad, *honest[5:]]:
        strategy.accumulate(d, 100)
    new = strategy.finalize(g)
    hmean = {k: np.mean([d[k] for d in honest], axis=0) for k in shape}
    diff = {k: new[k] - g[k] - hmean[k] for k in shape}
    return l2_norm(diff), l2_norm(hmean)


@pytest.mark.parametrize("attack", [100.0, -10.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_byzantine_scaled_update_wrecks_fedavg_but_not_robust_options(attack: float, seed: int) -> None:
    err, ref = _byzantine_round(FedAvg(), attack, seed)
    assert err > ref, f"the attack should move FedAvg by more than the honest step ({err:.3f} vs {ref:.3f})"
    rng = np.random.default_rng(seed)
    honest_norm = ref * (1 + 0.05 * rng.random())  # ~ an honest update's norm, what an operator sets
    for s in (CoordinateMedian(), TrimmedMean(beta=0.1), NormClip(max_norm=honest_norm * 1.2)):
        e, r = _byzantine_round(s, attack, seed)
        assert e < 0.25 * r, f"{s.name}: aggregate {e:.4f} from the honest mean (honest norm {r:.4f})"


def test_held_updates_are_bounded_and_round_trip_through_state() -> None:
    rng = np.random.default_rng(5)
    g = _model(rng)
    s = TrimmedMean(beta=0.25, max_updates=4)
    s.reset(g)
    ds = [{k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items()} for _ in range(4)]
    ds[2].pop("w")
    for d in ds[:2]:
        s.accumulate(d, 1)
    arrays, scalars = s.state()
    arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
    t = make_strategy("trimmed", beta=0.25, max_updates=4)
    t.reset(g)
    t.load_state(arrays, scalars)
    for x in (s, t):
        for d in ds[2:]:
            x.accumulate(d, 1)
    with pytest.raises(RuntimeError, match="max_updates=4"):
        s.accumulate(ds[0], 1)
    a, b = s.finalize(g), t.finalize(g)
    for k in g:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta=0.5)
    with pytest.raises(ValueError, match="max_norm"):
        NormClip(max_norm=float("inf"))
    bad = CoordinateMedian()
    bad.reset({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="does not fit"):
        bad.load_state({"u0/w": np.zeros(4, np.float32)}, {"n": 1.0})


def test_every_registered_strategy_builds_and_bad_options_name_the_strategy() -> None:
    from orbitfl.ground.strategies import STRATEGIES

    assert {"fedavg", "partial", "fedbuff", "emsfl", "clip", "median", "trimmed"} <= set(STRATEGIES)
    for name in STRATEGIES:
        assert make_strategy(name).name == name  # every option has a default
    with pytest.raises(ValueError, match=r"bufer_size: not an option of strategy 'fedbuff'"):
        make_strategy("fedbuff", bufer_size=3)
