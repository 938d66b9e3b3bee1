"""FedAvg accumulated as updates stream in equals the batch sample-weighted mean."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.ground.strategies import FedAvg, make_strategy

RNG = np.random.default_rng(2)


def test_streaming_fedavg_equals_batch_weighted_mean() -> None:
    g = {
        "w": RNG.standard_normal((20, 10)).astype(np.float32),
        "b": RNG.standard_normal(10).astype(np.float32),
    }
    deltas = [{k: RNG.standard_normal(v.shape).astype(np.float32) for k, v in g.items()} for _ in range(7)]
    samples = [int(s) for s in RNG.integers(1, 500, size=7)]
    s = FedAvg()
    s.reset(g)
    for d, n in zip(deltas, samples, strict=True):
        s.accumulate(d, n)
    assert s.updates == 7
    new = s.finalize(g)
    for k in g:
        stacked = np.stack([d[k].astype(np.float64) for d in deltas])
        batch = g[k].astype(np.float64) + np.average(stacked, axis=0, weights=samples)
        np.testing.assert_allclose(new[k], batch.astype(np.float32), rtol=1e-6, atol=1e-6)
        assert new[k].dtype == np.float32


def test_state_round_trip_continues_exactly() -> None:
    g = {"w": np.zeros((3, 3), np.float32)}
    ds = [{"w": RNG.standard_normal((3, 3)).astype(np.float32)} for _ in range(4)]
    a = FedAvg()
    a.reset(g)
    for d in ds:
        a.accumulate(d, 3)
    b = FedAvg()
    b.reset(g)
    b.accumulate(ds[0], 3)
    b.accumulate(ds[1], 3)
    arrays, scalars = b.state()
    c = FedAvg()
    c.reset(g)
    c.load_state({k: v.copy() for k, v in arrays.items()}, scalars)
    c.accumulate(ds[2], 3)
    c.accumulate(ds[3], 3)
    assert c.updates == 4
    assert np.array_equal(c.finalize(g)["w"], a.finalize(g)["w"])


def test_partial_updates_average_each_tensor_over_its_senders() -> None:
    g = {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)}
    s = FedAvg(partial_ok=True)
    s.reset(g)
    s.accumulate({"a": np.full(2, 2.0, np.float32)}, 1)
    s.accumulate({"a": np.full(2, 4.0, np.float32)}, 3)
    new = s.finalize(g)
    assert np.allclose(new["a"], 3.5)
    assert np.array_equal(new["b"], g["b"])  # nobody sent it: unchanged


def test_staleness_decay_down_weights_old_updates() -> None:
    g = {"a": np.zeros(1, np.float32)}
    s = FedAvg(staleness_decay=0.5)
    s.reset(g)
    s.accumulate({"a": np.ones(1, np.float32)}, 1, staleness=0)
    s.accumulate({"a": np.full(1, 4.0, np.float32)}, 1, staleness=1)
    assert np.allclose(s.finalize(g)["a"], (1 * 1 + 0.5 * 4) / 1.5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FedAvg(staleness_decay=0.0)
    with pytest.raises(ValueError):
        make_strategy("nope")
    s = make_strategy("fedavg")
    s.reset({"a": np.zeros(1, np.float32)})
    with pytest.raises(ValueError):
        s.accumulate({"a": np.zeros(1, np.float32)}, 0)
    with pytest.raises(KeyError):
        s.accumulate({"zz": np.zeros(1, np.float32)}, 1)
