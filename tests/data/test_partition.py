"""Non-IID partitioning: every sample exactly once, deterministic by seed, skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitfl.data import dirichlet_partition, iid_partition, shard_partition

LABELS = np.repeat(np.arange(10), 60)[np.random.default_rng(0).permutation(600)]


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.dtype == np.int64 and len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))


@given(n_clients=st.integers(1, 20), alpha=st.floats(0.05, 100.0), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None, database=None)
def test_dirichlet_covers_every_sample_exactly_once(n_clients: int, alpha: float, seed: int) -> None:
    parts = dirichlet_partition(LABELS, n_clients, alpha, seed=seed)
    assert len(parts) == n_clients and all(len(p) >= 1 for p in parts)
    assert_exact_cover(parts, len(LABELS))


@given(n_clients=st.integers(1, 30), shards=st.integers(1, 5), seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None, database=None)
def test_shards_and_iid_cover_every_sample_exactly_once(n_clients: int, shards: int, seed: int) -> None:
    assert_exact_cover(shard_partition(LABELS, n_clients, shards, seed=seed), len(LABELS))
    assert_exact_cover(iid_partition(len(LABELS), n_clients, seed=seed), len(LABELS))


def test_partitions_are_deterministic_by_seed() -> None:
    for fn in (
        lambda s: dirichlet_partition(LABELS, 8, 0.3, seed=s),
        lambda s: shard_partition(LABELS, 8, seed=s),
        lambda s: iid_partition(600, 8, seed=s),
    ):
        a, b, c = fn(7), fn(7), fn(8)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_small_alpha_and_shards_are_non_iid() -> None:
    def classes_per_client(parts: list[np.ndarray]) -> float:
        return float(np.mean([len(np.unique(LABELS[p])) for p in parts]))

    skewed = classes_per_client(dirichlet_partition(LABELS, 10, 0.1, seed=0))
    mixed = classes_per_client(dirichlet_partition(LABELS, 10, 100.0, seed=0))
    assert skewed < 5 < mixed
    assert classes_per_client(shard_partition(LABELS, 10, 2, seed=0)) <= 2 + 1e-9  # 60-sample shards


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dirichlet_partition(LABELS, 4, 0.0)
    with pytest.raises(ValueError, match="n_clients"):
        dirichlet_partition(LABELS, 0, 1.0)
    with pytest.raises(ValueError, match="at least one sample each"):
        iid_partition(3, 5)
    with pytest.raises(TypeError, match="integers"):
        shard_partition(LABELS.astype(np.float32), 4)
    with pytest.raises(ValueError, match="one-dimensional"):
        shard_partition(LABELS.reshape(60, 10), 4)
    with pytest.raises(ValueError, match="could not give every one of 50 clients"):
        dirichlet_partition(LABELS[:60], 50, 0.01, min_size=1, max_tries=3)
