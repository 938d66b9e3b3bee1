"""EMS-FL: the expert assignment is optimal, disjoint and within capacity; the ground aggregates
per expert (only assigned experts change) and buffers the shared parts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from orbitfl.agent.strategy_side import experts_for
from orbitfl.ground.strategies import make_strategy
from orbitfl.ground.strategies.assignment import (
    assign_experts,
    assignment_hints,
    cluster_affinity,
    router_affinity,
    total_affinity,
)
from orbitfl.ground.strategies.emsfl import EMSFL, expert_of
from orbitfl.wire.messages import Task, decode, encode


def _brute(a: np.ndarray, caps: list[int], min_experts: int) -> float:
    """Best total over every way to give each expert to one cluster or to none."""
    n_c, n_e = a.shape
    best = -1.0
    for owners in itertools.product(range(-1, n_c), repeat=n_e):
        counts = [sum(1 for o in owners if o == c) for c in range(n_c)]
        if any(n > cap or n < min_experts for n, cap in zip(counts, caps, strict=True)):
            continue
        best = max(best, sum(a[o, e] for e, o in enumerate(owners) if o >= 0))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_assignment_is_optimal_disjoint_and_within_capacity(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_c, n_e = int(rng.integers(1, 4)), int(rng.integers(2, 7))
    a = rng.dirichlet(np.ones(n_e), size=n_c)
    caps = [int(c) for c in rng.integers(1, 4, size=n_c)]
    min_experts = int(rng.integers(0, 2)) if n_c <= n_e else 0
    got = assign_experts(a, caps, min_experts)
    flat = [e for es in got for e in es]
    assert len(flat) == len(set(flat)), "two clusters share an expert"
    assert all(min_experts <= len(es) <= cap for es, cap in zip(got, caps, strict=True))
    assert total_affinity(a, got) == pytest.approx(_brute(a, caps, min_experts), abs=1e-12)


def test_min_experts_gives_every_cluster_one_even_when_another_wants_all() -> None:
    a = np.array([[0.9, 0.8, 0.7], [0.1, 0.1, 0.05]])
    assert assign_experts(a, 3) == [[0, 1, 2], []]
    assert assign_experts(a, 3, min_experts=1) == [[0, 1], [2]]


def test_assignment_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        assign_experts(np.array([[0.5, -0.1]]), 1)
    with pytest.raises(ValueError, match="finite"):
        assign_experts(np.array([[np.nan, 0.1]]), 1)
    with pytest.raises(ValueError, match="2 entries for 1 clusters"):
        assign_experts(np.array([[0.5, 0.1]]), [1, 1])
    with pytest.raises(ValueError, match="exceeds"):
        assign_experts(np.ones((3, 2)), 1, min_experts=1)
    with pytest.raises(ValueError, match="matrix"):
        assign_experts(np.ones(3), 1)


def test_affinities_from_gates_and_clusters() -> None:
    rng = np.random.default_rng(1)
    gates = {f"a{i}": rng.dirichlet(np.ones(4), size=20) for i in range(4)}
    per_agent = {k: router_affinity(v) for k, v in gates.items()}
    for k, v in per_agent.items():
        np.testing.assert_allclose(v, gates[k].mean(axis=0))
        assert v.sum() == pytest.approx(1.0)
    names, m = cluster_affinity(per_agent, {"a0": "x", "a1": "x", "a2": "y", "a3": "y"}, {"a0": 1, "a1": 3})
    assert names == ["x", "y"]
    np.testing.assert_allclose(m[0], (per_agent["a0"] + 3 * per_agent["a1"]) / 4)
    np.testing.assert_allclose(m[1], (per_agent["a2"] + per_agent["a3"]) / 2)
    with pytest.raises(ValueError, match="no affinity"):
        cluster_affinity(per_agent, {"zz": "x"})


def _moe(rng: np.random.Generator, experts: int = 4) -> dict[str, np.ndarray]:
    g = {
        "router.weight": rng.standard_normal((experts, 6)).astype(np.float32),
        "router.bias": np.zeros(experts, np.float32),
    }
    for e in range(experts):
        g[f"expert.{e}.fc1.weight"] = rng.standard_normal((5, 6)).astype(np.float32)
        g[f"expert.{e}.fc2.bias"] = rng.standard_normal(3).astype(np.float32)
    return g


def test_only_assigned_experts_change_and_math_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    g = _moe(rng)
    assert expert_of("expert.3.fc1.weight") == 3 and expert_of("router.weight") is None
    affinity = np.array([[0.6, 0.3, 0.05, 0.05], [0.1, 0.2, 0.65, 0.05]])
    assignment = assign_experts(affinity, 1)
    assert assignment == [[0], [2]]
    # two agents in cluster 0, one in cluster 1; each uploads its cluster's experts and the router
    agents = [(0, 30, 0), (0, 10, 2), (1, 20, 1)]  # (cluster, samples, staleness)
    s = make_strategy("emsfl", expert_lr=1.0, server_lr=0.5)
    s.reset(g)
    ups = []
    for c, n, tau in agents:
        names = [k for k in g if k.startswith("router.") or expert_of(k) in assignment[c]]
        d = {k: rng.standard_normal(g[k].shape).astype(np.float32) for k in names}
        ups.append((d, n, tau))
        s.accumulate(d, n, tau)
    new = s.finalize(g)
    for k in g:
        e = expert_of(k)
        if e in (1, 3):
            np.testing.assert_array_equal(new[k], g[k])  # nobody owns it: untouched
            continue
        sent = [(d[k].astype(np.float64), n, 1 / math.sqrt(1 + tau)) for d, n, tau in ups if k in d]
        if e is None:  # shared: FedBuff step, divided by undiscounted samples
            step = 0.5 * sum(sw * n * d for d, n, sw in sent) / sum(n for _, n, _ in sent)
        else:  # expert: staleness-weighted mean over its owners
            step = sum(sw * n * d for d, n, sw in sent) / sum(sw * n for _, n, sw in sent)
        np.testing.assert_allclose(new[k], (g[k] + step).astype(np.float32), rtol=1e-6, atol=1e-6)
        assert not np.array_equal(new[k], g[k])


def test_emsfl_state_round_trip_and_refusals() -> None:
    rng = np.random.default_rng(3)
    g = _moe(rng, 2)
    ups = [
        (
            {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items() if "expert.1" not in k},
            4,
            1,
        )
    ]
    ups.append(
        (
            {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items() if "expert.0" not in k},
            6,
            0,
        )
    )
    a = EMSFL()
    a.reset(g)
    b = EMSFL()
    b.reset(g)
    a.accumulate(*ups[0])
    b.load_state(*a.state())
    a.accumulate(*ups[1])
    b.accumulate(*ups[1])
    assert a.contributions()[0] == pytest.approx(4 / math.sqrt(2))
    na, nb = a.finalize(g), b.finalize(g)
    for k in g:
        np.testing.assert_array_equal(na[k], nb[k])
    c = EMSFL(max_staleness=2)
    c.reset(g)
    with pytest.raises(ValueError, match="at most 2"):
        c.accumulate(ups[0][0], 4, 3)
    with pytest.raises(ValueError, match="no parameter named"):
        EMSFL().reset({"w": np.zeros(2, np.float32)})


def test_assignment_travels_as_task_hints() -> None:
    hints = assignment_hints([[0, 3], [1]], ["x", "y"], {"a1": "x", "a2": "x", "a3": "y"})
    t = decode(encode(Task("g:1", "r1/a1", 1, 0, "fp32", hints, None, None)))
    assert isinstance(t, Task)
    assert experts_for(t.hints, "a2") == [0, 3] and experts_for(t.hints, "a3") == [1]
    assert experts_for(t.hints, "a9") is None and experts_for({}, "a1") is None
    with pytest.raises(ValueError, match="no assignment"):
        assignment_hints([[0]], ["x"], {"a1": "z"})
    with pytest.raises(ValueError, match="expert indices"):
        experts_for({"experts": {"a1": ["0"]}}, "a1")


def test_trainable_for_names_the_agents_experts_and_the_router() -> None:
    from orbitfl.agent.strategy_side import trainable_for

    names = ["router.weight", "router.bias", *(f"expert.{e}.fc{j}.weight" for e in range(3) for j in (1, 2))]
    hints = {"experts": {"a1": [0, 2]}}
    assert trainable_for(hints, "a1", names) == [
        "router.weight",
        "router.bias",
        "expert.0.fc1.weight",
        "expert.0.fc2.weight",
        "expert.2.fc1.weight",
        "expert.2.fc2.weight",
    ]
    assert trainable_for(hints, "a1", names, shared=()) == [
        n for n in names if n.startswith(("expert.0.", "expert.2."))
    ]
    assert trainable_for(hints, "zz", names) is None
    with pytest.raises(ValueError, match=r"\[7\]"):
        trainable_for({"experts": {"a1": [7]}}, "a1", names)


def test_frozen_experts_sent_as_zeros_count_as_not_sent() -> None:
    rng = np.random.default_rng(4)
    g = _moe(rng, 3)
    a, b = EMSFL(), EMSFL()
    a.reset(g)
    b.reset(g)
    for mine, n in (([0], 5), ([1, 2], 7)):
        d = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items()}
        for k in g:
            e = expert_of(k)
            if e is not None and e not in mine:
                d[k] = np.zeros_like(g[k])  # frozen in training: delta exactly zero
        a.accumulate(d, n)
        b.accumulate({k: v for k, v in d.items() if np.any(v)}, n)
    na, nb = a.finalize(g), b.finalize(g)
    for k in g:
        np.testing.assert_array_equal(na[k], nb[k])
    # with the option off, the zeros are averaged in: expert 0 moves half as far
    c = EMSFL(zero_is_unsent=False)
    c.reset(g)
    d0 = {k: np.ones_like(v) if expert_of(k) == 0 else np.zeros_like(v) for k, v in g.items()}
    d1 = {k: np.zeros_like(v) for k, v in g.items()}
    c.accumulate(d0, 1)
    c.accumulate(d1, 1)
    np.testing.assert_allclose(c.finalize(g)["expert.0.fc2.bias"], g["expert.0.fc2.bias"] + 0.5, rtol=1e-6)
