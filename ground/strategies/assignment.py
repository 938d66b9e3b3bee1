"""EMS-FL expert assignment: which cluster of agents trains which experts.

Given an affinity matrix A (clusters × experts; e.g. each cluster's mean router probability per
expert on its local data), choose for each cluster c a set S_c of experts, pairwise disjoint (no
two clusters share an expert), |S_c| ≤ capacity_c and |S_c| ≥ min_experts, maximising
Σ_c Σ_{e∈S_c} A[c, e].

This is a maximum-weight b-matching in a bipartite graph, solved exactly as an assignment problem
on a capacity-expanded matrix (one row per cluster slot) with scipy's
``linear_sum_assignment`` (Jonker-Volgenant). Affinities are ≥ 0, so filling as many slots as
possible never lowers the total, which is what the rectangular assignment does. The first
``min_experts`` slots of every cluster carry a bonus larger than any total affinity, so every
optimum fills them first: among assignments giving every cluster its minimum, the result is the
best.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt


def router_affinity(gates: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Mean router probability per expert over local samples (gates: [N, E] softmax outputs)."""
    g = np.asarray(gates)
    if g.ndim != 2 or g.shape[0] == 0:
        raise ValueError(f"gates must be [samples, experts] with samples > 0, got shape {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("gates hold NaN or Inf")
    out: npt.NDArray[np.float64] = g.astype(np.float64).mean(axis=0)
    return out


def cluster_affinity(
    per_agent: Mapping[str, npt.NDArray[Any]],
    clusters: Mapping[str, str],
    samples: Mapping[str, int] | None = None,
) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Sample-weighted mean affinity per cluster. ``clusters``: agent -> cluster name. Returns the
    cluster names (sorted) and the [clusters, experts] matrix."""
    names = sorted(set(clusters.values()))
    if not names:
        raise ValueError("no clusters")
    missing = sorted(set(clusters) - set(per_agent))
    if missing:
        raise ValueError(f"no affinity reported by agents {missing[:5]}")
    sizes = {np.asarray(v).shape for v in per_agent.values()}
    if len(sizes) != 1 or len(next(iter(sizes))) != 1:
        raise ValueError(f"affinities must be vectors of one length, got shapes {sorted(sizes)}")
    e = next(iter(sizes))[0]
    tot = np.zeros((len(names), e))
    wsum = np.zeros(len(names))
    for agent, c in clusters.items():
        w = float((samples or {}).get(agent, 1))
        if w <= 0:
            raise ValueError(f"agent {agent!r} has samples {w}; must be > 0")
        i = names.index(c)
        tot[i] += w * np.asarray(per_agent[agent], np.float64)
        wsum[i] += w
    return names, tot / wsum[:, None]


def _capacities(capacity: int | Sequence[int], n: int) -> list[int]:
    caps = [int(capacity)] * n if isinstance(capacity, int | np.integer) else [int(c) for c in capacity]
    if len(caps) != n:
        raise ValueError(f"capacity has {len(caps)} entries for {n} clusters")
    if any(c < 0 for c in caps):
        raise ValueError(f"capacities must be >= 0, got {caps}")
    return caps


def assign_experts(
    affinity: npt.NDArray[Any], capacity: int | Sequence[int], min_experts: int = 0
) -> list[list[int]]:
    """Optimal non-overlapping assignment: for each cluster (row), its sorted expert indices."""
    from scipy.optimize import linear_sum_assignment

    a = np.asarray(affinity, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"affinity must be a non-empty [clusters, experts] matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("affinity must be finite and >= 0 (e.g. mean router probabilities)")
    n_c, n_e = a.shape
    caps = _capacities(capacity, n_c)
    if min_experts < 0:
        raise ValueError(f"min_experts must be >= 0, got {min_experts}")
    if any(c < min_experts for c in caps):
        raise ValueError(f"a capacity below min_experts={min_experts}: {caps}")
    if min_experts * n_c > n_e:
        raise ValueError(f"{n_c} clusters × min_experts={min_experts} exceeds the {n_e} experts")
    bonus = 1.0 + float(a.sum())
    rows: list[int] = []
    gains: list[npt.NDArray[np.float64]] = []
    for c, cap in enumerate(caps):
        for slot in range(min(cap, n_e)):  # more slots than experts could never be filled
            rows.append(c)
            gains.append(a[c] + (bonus if slot < min_experts else 0.0))
    out: list[list[int]] = [[] for _ in range(n_c)]
    if not rows:
        return out
    r, e = linear_sum_assignment(np.stack(gains), maximize=True)
    for slot, expert in zip(r.tolist(), e.tolist(), strict=True):
        out[rows[slot]].append(int(expert))
    return [sorted(x) for x in out]


def total_affinity(affinity: npt.NDArray[Any], assignment: Sequence[Sequence[int]]) -> float:
    a = np.asarray(affinity, dtype=np.float64)
    return float(sum(a[c, e] for c, es in enumerate(assignment) for e in es))


def assignment_hints(
    assignment: Sequence[Sequence[int]], cluster_names: Sequence[str], members: Mapping[str, str]
) -> dict[str, Any]:
    """TASK hints carrying the assignment to agents: ``{"experts": {agent_id: [expert, ...]}}``
    (plain lists and ints, so msgpack carries it). ``members``: agent -> cluster name."""
    if len(assignment) != len(cluster_names):
        raise ValueError(f"{len(assignment)} assignments for {len(cluster_names)} clusters")
    by_cluster = dict(zip(cluster_names, assignment, strict=True))
    unknown = sorted({c for c in members.values() if c not in by_cluster})
    if unknown:
        raise ValueError(f"agents in clusters with no assignment: {unknown[:5]}")
    return {"experts": {a: [int(e) for e in by_cluster[c]] for a, c in sorted(members.items())}}


# The agent side of these hints (which experts an agent trains) is orbitfl.agent.strategy_side.
