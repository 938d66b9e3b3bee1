"""Partial weight averaging (ground) and the agent's choice of blocks under a byte budget."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from orbitfl.agent.partial import block_scores, choose_blocks, measure_bytes_per_value
from orbitfl.ground.strategies import FedAvg, make_strategy
from orbitfl.ground.strategies.partial import PartialAverage


def _model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "w": rng.standard_normal((7, 9)).astype(np.float32),  # 63 values: blocks of 8 leave a tail of 7
        "b": rng.standard_normal(5).astype(np.float32),
    }


def _brute(g, deltas, masks, samples, block, lr=1.0):  # type: ignore[no-untyped-def]
    """Per coordinate: sample-weighted mean over the agents whose mask covers it; else unchanged."""
    out = {}
    for k, gv in g.items():
        flat = gv.reshape(-1).astype(np.float64)
        new = flat.copy()
        for j in range(flat.size):
            num = den = 0.0
            for d, m, n in zip(deltas, masks, samples, strict=True):
                if k in d and m[k][j // block if block else 0]:
                    num += n * float(d[k].reshape(-1)[j])
                    den += n
            if den > 0:
                new[j] = flat[j] + lr * num / den
        out[k] = new.astype(np.float32).reshape(gv.shape)
    return out


@pytest.mark.parametrize("block", [0, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_partial_equals_brute_force(block: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = _model(rng)
    deltas, masks, samples = [], [], []
    for _ in range(5):
        d = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items() if rng.random() < 0.8}
        m = {}
        for k in d:
            nb = 1 if block == 0 else -(-g[k].size // block)
            m[k] = rng.random(nb) < 0.6
        deltas.append(d)
        masks.append(m)
        samples.append(int(rng.integers(1, 300)))
    s = PartialAverage(block=block, server_lr=0.7)
    s.reset(g)
    for d, m, n in zip(deltas, masks, samples, strict=True):
        s.accumulate(d, n, masks=m)
    new = s.finalize(g)
    want = _brute(g, deltas, masks, samples, block, lr=0.7)
    for k in g:
        np.testing.assert_allclose(new[k], want[k], rtol=1e-6, atol=1e-6)


def test_coordinates_nobody_sent_keep_their_value_and_sent_ones_move() -> None:
    rng = np.random.default_rng(5)
    g = _model(rng)
    s = PartialAverage(block=8)
    s.reset(g)
    m = np.zeros(8, bool)
    m[[1, 7]] = True  # block 7 is the 7-value tail
    s.accumulate({"w": np.ones((7, 9), np.float32)}, 10, masks={"w": m})
    new = s.finalize(g)
    np.testing.assert_array_equal(new["b"], g["b"])
    flat_new, flat_g = new["w"].reshape(-1), g["w"].reshape(-1)
    sent = np.zeros(63, bool)
    sent[8:16] = True
    sent[56:63] = True
    np.testing.assert_array_equal(flat_new[~sent], flat_g[~sent])
    np.testing.assert_allclose(flat_new[sent], flat_g[sent] + 1.0, rtol=1e-6)


def test_zero_filled_delta_averages_like_explicit_masks() -> None:
    rng = np.random.default_rng(6)
    g = _model(rng)
    a, b = PartialAverage(block=8, zero_is_unsent=False), PartialAverage(block=8)
    a.reset(g)
    b.reset(g)
    for n in (3, 11, 40):
        d = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items()}
        sel = choose_blocks(d, budget_bytes=4 * 30, bytes_per_value=4, block=8)
        a.accumulate({k: d[k] for k in sel.masks}, n, masks=sel.masks)
        b.accumulate(sel.tensors(d), n)
    na, nb = a.finalize(g), b.finalize(g)
    for k in g:
        np.testing.assert_allclose(na[k], nb[k], rtol=1e-6, atol=1e-7)


def test_full_updates_equal_fedavg_and_make_strategy_builds_it() -> None:
    rng = np.random.default_rng(7)
    g = _model(rng)
    p = make_strategy("partial", block=16)
    f = FedAvg()
    p.reset(g)
    f.reset(g)
    for _ in range(4):
        d = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items()}
        n = int(rng.integers(1, 50))
        p.accumulate(d, n)
        f.accumulate(d, n)
    pn, fn = p.finalize(g), f.finalize(g)
    for k in g:
        np.testing.assert_allclose(pn[k], fn[k], rtol=1e-6, atol=1e-7)


def test_state_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(8)
    g = _model(rng)
    ups = [
        (
            {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in g.items()},
            {"w": rng.random(8) < 0.5},
        )
        for _ in range(6)
    ]
    whole = PartialAverage(block=8)
    whole.reset(g)
    for d, m in ups:
        whole.accumulate(d, 5, masks=m)
    first = PartialAverage(block=8)
    first.reset(g)
    for d, m in ups[:3]:
        first.accumulate(d, 5, masks=m)
    arrays, scalars = first.state()
    arrays = {k: np.array(v, copy=True) for k, v in arrays.items()}
    del first  # "killed"
    second = PartialAverage(block=8)
    second.reset(g)
    second.load_state(arrays, scalars)
    for d, m in ups[3:]:
        second.accumulate(d, 5, masks=m)
    assert second.updates == 6
    a, b = whole.finalize(g), second.finalize(g)
    for k in g:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(ValueError, match="block size"):
        other = PartialAverage(block=4)
        other.reset(g)
        other.load_state(arrays, scalars)


def test_bad_masks_and_names_are_refused_before_anything_is_folded() -> None:
    g = {"w": np.zeros(10, np.float32)}
    s = PartialAverage(block=4)
    s.reset(g)
    with pytest.raises(ValueError, match="blocks"):
        s.accumulate({"w": np.ones(10, np.float32)}, 1, masks={"w": np.ones(2, bool)})
    with pytest.raises(TypeError, match="bool"):
        s.accumulate({"w": np.ones(10, np.float32)}, 1, masks={"w": np.ones(3, np.int8)})
    with pytest.raises(KeyError, match="not in the model"):
        s.accumulate({"v": np.ones(10, np.float32)}, 1)
    with pytest.raises(ValueError, match="samples"):
        s.accumulate({"w": np.ones(10, np.float32)}, 0)
    assert s.updates == 0
    np.testing.assert_array_equal(s.finalize(g)["w"], g["w"])
    with pytest.raises(ValueError, match="server_lr"):
        PartialAverage(server_lr=0.0)
    with pytest.raises(ValueError, match="block"):
        PartialAverage(block=-1)


# --- agent side ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_choice_respects_budget_and_takes_the_largest_change_blocks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # 3 tensors of whole blocks of 16 (equal sizes): the best choice is the top blocks by norm.
    delta = {f"t{i}": (rng.standard_normal(64) * rng.uniform(0.1, 3)).astype(np.float32) for i in range(3)}
    bpv = 0.5  # 4-bit values
    budget = float(rng.integers(1, 12)) * 16 * bpv + 3.0  # a few blocks plus a remainder too small
    sel = choose_blocks(delta, budget, bpv, block=16)
    assert sel.bytes <= budget
    assert sel.values * bpv == sel.bytes
    chosen = {(k, i) for k, m in sel.masks.items() for i in np.flatnonzero(m)}
    fits = int(budget // (16 * bpv))
    assert len(chosen) == fits
    scores = block_scores(delta, 16)
    every = sorted(((float(s), k, i) for k, sc in scores.items() for i, s in enumerate(sc)), reverse=True)
    assert chosen == {(k, i) for _, k, i in every[:fits]}
    # brute force over all subsets of the same size: none captures more squared change
    best = max(
        sum(scores[k][i] for k, i in combo)
        for combo in itertools.combinations([(k, i) for _, k, i in every], fits)
    )
    assert sum(scores[k][i] for k, i in chosen) == pytest.approx(best)
    sent = sel.tensors(delta)
    for k, m in sel.masks.items():
        keep = np.repeat(m, 16)
        np.testing.assert_array_equal(sent[k][keep], delta[k][keep])
        assert not np.any(sent[k][~keep])


def test_choice_with_overhead_always_and_importance() -> None:
    delta = {
        "router": np.full(4, 0.01, np.float32),
        "a": np.array([5, 5, 0.1, 0.1], np.float32),
        "b": np.array([1, 1, 1, 1], np.float32),
    }
    sel = choose_blocks(delta, 4 * 8 + 9, 4, block=2, overhead_bytes=5, always=["router"])
    assert bool(sel.masks["router"].all())
    assert sel.bytes <= 4 * 8 + 9
    assert sel.masks["a"].tolist() == [True, False] and "b" not in sel.masks
    # loss-weighted: an importance that makes "b" matter more flips the choice
    imp = {"a": np.full(4, 0.01, np.float32), "b": np.full(4, 10.0, np.float32)}
    sel2 = choose_blocks(delta, 4 * 2, 4, block=2, importance=imp)
    assert list(sel2.masks) == ["b"]
    with pytest.raises(ValueError, match="always"):
        choose_blocks(delta, 10, 4, always=["router"])
    with pytest.raises(ValueError, match="bytes_per_value"):
        choose_blocks(delta, 10, 0)
    with pytest.raises(ValueError, match="NaN"):
        choose_blocks({"a": np.array([np.nan], np.float32)}, 10, 4)


def test_measured_bytes_per_value_follows_the_codec() -> None:
    rng = np.random.default_rng(9)
    sample = {"w": rng.standard_normal((64, 64)).astype(np.float32)}
    fp32 = measure_bytes_per_value("fp32", sample)
    fp16 = measure_bytes_per_value("fp16", sample)
    q4 = measure_bytes_per_value("quant:4", sample)
    assert 4.0 <= fp32 < 4.1 and 2.0 <= fp16 < 2.1 and 0.5 <= q4 < 0.6
    with pytest.raises(ValueError):
        measure_bytes_per_value("nosuchstage:3", sample)


def test_tensors_larger_than_one_chunk_with_masks_across_chunk_edges() -> None:
    rng = np.random.default_rng(10)
    n, block = 70_001, 1000  # > two 32768-element chunks; blocks straddle the chunk edges
    g = {"w": rng.standard_normal(n).astype(np.float32)}
    nb = -(-n // block)
    ups = [
        (rng.standard_normal(n).astype(np.float32), rng.random(nb) < 0.5, int(rng.integers(1, 9)))
        for _ in range(3)
    ]
    s = PartialAverage(block=block)
    s.reset(g)
    for d, m, k in ups:
        s.accumulate({"w": d}, k, masks={"w": m})
    new = s.finalize(g)["w"]
    num = np.zeros(n)
    den = np.zeros(n)
    for d, m, k in ups:
        e = np.repeat(m, block)[:n]
        num += np.where(e, k * d.astype(np.float64), 0.0)
        den += np.where(e, k, 0)
    want = np.where(den > 0, g["w"] + num / np.where(den > 0, den, 1), g["w"]).astype(np.float32)
    np.testing.assert_allclose(new, want, rtol=1e-6, atol=1e-6)
    assert np.array_equal(new[den == 0], g["w"][den == 0])
