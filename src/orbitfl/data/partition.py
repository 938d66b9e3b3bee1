"""Split a data set's sample indices among N clients, IID or non-IID, deterministically by seed.

Each function returns a list of N sorted int64 index arrays that together cover every sample
exactly once.
"""

from __future__ import annotations

import numpy as np


def _check(n_samples: int, n_clients: int) -> None:
    if isinstance(n_clients, bool) or not isinstance(n_clients, int | np.integer) or n_clients <= 0:
        raise ValueError(f"n_clients must be a positive integer, got {n_clients!r}")
    if n_samples < n_clients:
        raise ValueError(f"cannot give {n_clients} clients at least one sample each from {n_samples} samples")


def _labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    return y


def iid_partition(n_samples: int, n_clients: int, *, seed: int = 0) -> list[np.ndarray]:
    _check(n_samples, n_clients)
    order = np.random.default_rng(seed).permutation(n_samples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, n_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    *,
    seed: int = 0,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Per class, split its samples among clients in proportions drawn from Dirichlet(alpha)
    (small alpha = few classes per client). Redrawn (still seeded) until every client holds at
    least ``min_size`` samples; ValueError if that is impossible in ``max_tries`` draws."""
    y = _labels(labels)
    _check(len(y), n_clients)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if min_size * n_clients > len(y):
        raise ValueError(f"min_size {min_size} x {n_clients} clients exceeds {len(y)} samples")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(o) for o in out) >= min_size:
            return out
    raise ValueError(
        f"could not give every one of {n_clients} clients >= {min_size} samples with "
        f"alpha={alpha} in {max_tries} draws; raise alpha or lower n_clients"
    )


def shard_partition(
    labels: np.ndarray, n_clients: int, shards_per_client: int = 2, *, seed: int = 0
) -> list[np.ndarray]:
    """McMahan et al.'s label shards: sort samples by label, cut into ``n_clients *
    shards_per_client`` equal shards, give each client ``shards_per_client`` random shards."""
    y = _labels(labels)
    _check(len(y), n_clients)
    if shards_per_client <= 0:
        raise ValueError(f"shards_per_client must be positive, got {shards_per_client}")
    n_shards = n_clients * shards_per_client
    if n_shards > len(y):
        raise ValueError(f"{n_shards} shards need at least as many samples, got {len(y)}")
    rng = np.random.default_rng(seed)
    # Break ties among equal labels randomly, so shards of one class are not ordered by index.
    order = np.lexsort((rng.random(len(y)), y))
    shards = np.array_split(order, n_shards)
    assign = rng.permutation(n_shards)
    return [
        np.sort(
            np.concatenate([shards[s] for s in assign[k * shards_per_client : (k + 1) * shards_per_client]])
        ).astype(np.int64)
        for k in range(n_clients)
    ]
