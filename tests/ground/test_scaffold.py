"""SCAFFOLD's ground side against a NumPy re-statement of the server step (Karimireddy et al.
2020, Alg. 1): x ← x + η_g·mean Δyᵢ, c ← c + (1/N)·Σ Δcᵢ; its checkpoint and its TASK hint."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.ground.strategies import make_strategy
from orbitfl.ground.strategies.scaffold import Scaffold
from orbitfl.wire.control import HINT, PREFIX, control_from_hint

SHAPES = {"w": (3, 4), "b": (4,)}


def _update(rng: np.random.Generator) -> dict[str, np.ndarray]:
    d = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    d.update({PREFIX + n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()})
    return d


def test_the_server_step_matches_the_restatement() -> None:
    rng = np.random.default_rng(0)
    x = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    s = make_strategy("scaffold", server_lr=0.5, clients=5)
    assert isinstance(s, Scaffold)
    c = {n: np.zeros(sh) for n, sh in SHAPES.items()}
    for _ in range(3):
        s.reset(x)
        ups = [(_update(rng), int(rng.integers(10, 100))) for _ in range(3)]
        for d, m in ups:
            s.accumulate(d, m)
        out = s.finalize(x)
        total = sum(m for _, m in ups)
        for n in SHAPES:
            want = x[n] + 0.5 * sum(d[n].astype(np.float64) * m for d, m in ups) / total
            np.testing.assert_allclose(out[n], want, rtol=1e-6, atol=1e-6)
            c[n] = c[n] + sum(d[PREFIX + n].astype(np.float64) for d, _ in ups) / 5
            np.testing.assert_allclose(s.control[n], c[n], rtol=1e-12)
        x = out
    hint = s.task_hints({"a": {}, "b": {}})[HINT]
    got = control_from_hint(hint, SHAPES)
    for n in SHAPES:
        np.testing.assert_allclose(got[n], c[n].astype(np.float32))


def test_n_defaults_to_the_registered_agents_and_at_least_the_senders() -> None:
    rng = np.random.default_rng(1)
    x = {n: np.zeros(s, np.float32) for n, s in SHAPES.items()}
    s = Scaffold()
    s.task_hints({f"a{i}": {} for i in range(4)})  # four agents known
    s.reset(x)
    d = _update(rng)
    s.accumulate(d, 10)
    s.finalize(x)
    np.testing.assert_allclose(s.control["b"], d[PREFIX + "b"] / 4, rtol=1e-6)


def test_a_checkpoint_mid_round_continues_exactly() -> None:
    rng = np.random.default_rng(2)
    x = {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}
    a, b = Scaffold(clients=3), Scaffold(clients=3)
    for st in (a, b):
        st.reset(x)
    first = _update(rng)
    a.accumulate(first, 5)
    a.finalize(x)
    a.reset(x)
    second = _update(rng)
    a.accumulate(second, 7)
    arrays, scalars = a.state()
    b.load_state(arrays, scalars)
    third = _update(rng)
    for st in (a, b):
        st.accumulate(third, 9)
    oa, ob = a.finalize(x), b.finalize(x)
    for n in SHAPES:
        np.testing.assert_array_equal(oa[n], ob[n])
        np.testing.assert_array_equal(a.control[n], b.control[n])
    fresh = Scaffold()
    fresh.reset(x)
    with pytest.raises(ValueError, match="control variates"):
        fresh.load_state({k: v for k, v in arrays.items() if not k.startswith("scaffold.c/")}, scalars)


def test_bad_control_tensors_and_options_are_refused() -> None:
    s = Scaffold()
    s.reset({n: np.zeros(sh, np.float32) for n, sh in SHAPES.items()})
    with pytest.raises(KeyError, match="zz"):
        s.accumulate({PREFIX + "zz": np.zeros(2, np.float32)}, 1)
    with pytest.raises(ValueError, match="shape"):
        s.accumulate({PREFIX + "b": np.zeros(5, np.float32)}, 1)
    assert s.updates == 0
    with pytest.raises(ValueError, match="clients"):
        make_strategy("scaffold", clients=-1)
    assert s.extra_tensors(SHAPES) == {PREFIX + "w": (3, 4), PREFIX + "b": (4,)}
