"""SCAFFOLD's agent side on the real trainer, against a NumPy re-statement of the paper's local
update (Karimireddy et al. 2020, Alg. 1): y ← y − η(g(y) − cᵢ + c) for K steps, cᵢ⁺ the mean of
the K gradients (their option I, evaluated along the run), Δcᵢ = cᵢ⁺ − cᵢ sent with Δy."""

from __future__ import annotations

import numpy as np
import pytest

from orbitfl.agent.backends import open_trainer
from orbitfl.agent.learner import Learner
from orbitfl.agent.strategy_side import train_task
from orbitfl.data.datasets import load
from orbitfl.models.artifacts import build_artifacts
from orbitfl.models.zoo import build, get_weights
from orbitfl.wire.control import HINT, PREFIX, control_to_hint

LR = 0.2
N = 200  # one full batch per epoch, so the step is order-free and the re-statement exact


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Learner, dict[str, np.ndarray]]:
    d = load("digits", seed=0)
    x, y = np.ascontiguousarray(d.x_train[:N], np.float32), d.y_train[:N]
    spec = build("mlp", hidden=())  # softmax regression: one Gemm, a gradient NumPy can state
    art = tmp_path_factory.mktemp("scaffold") / "linear"
    build_artifacts(spec, art, optimizer="sgd")
    return Learner(open_trainer(art, learning_rate=LR), x, y), get_weights(spec.model)


def _restated(
    x: np.ndarray,
    y: np.ndarray,
    w: dict[str, np.ndarray],
    c: dict[str, np.ndarray],
    ci: dict[str, np.ndarray],
    k: int,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    W, b = w["fc1.weight"].astype(np.float64), w["fc1.bias"].astype(np.float64)
    transposed = W.shape[0] == x.shape[1]  # Gemm weights are (in, out) or (out, in)
    onehot = np.eye(b.size)[y]
    gs = {"fc1.weight": np.zeros_like(W), "fc1.bias": np.zeros_like(b)}
    y_w, y_b = W.copy(), b.copy()
    for _ in range(k):
        z = x @ (y_w if transposed else y_w.T) + y_b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        gz = (p - onehot) / len(x)
        gw = x.T @ gz if transposed else gz.T @ x
        gb = gz.sum(axis=0)
        gs["fc1.weight"] += gw
        gs["fc1.bias"] += gb
        y_w -= LR * (gw + c["fc1.weight"] - ci["fc1.weight"])
        y_b -= LR * (gb + c["fc1.bias"] - ci["fc1.bias"])
    delta = {"fc1.weight": y_w - W, "fc1.bias": y_b - b}
    dc = {n: gs[n] / k - ci[n] for n in gs}
    return delta, dc


def test_the_agent_side_matches_the_restated_update(setup: tuple[Learner, dict[str, np.ndarray]]) -> None:
    learner, w = setup
    rng = np.random.default_rng(0)
    c = {n: rng.normal(0, 0.05, v.shape).astype(np.float32) for n, v in w.items()}
    ci = {n: rng.normal(0, 0.05, v.shape).astype(np.float32) for n, v in w.items()}
    done = train_task(learner, "a", w, {HINT: control_to_hint(c)}, epochs=3, batch_size=N, seed=0, control=ci)
    want_delta, want_dc = _restated(learner.x.astype(np.float64), learner.y, w, c, ci, 3)
    assert sorted(done.delta) == sorted([*w, *(PREFIX + n for n in w)])
    for n in w:
        np.testing.assert_allclose(done.delta[n], want_delta[n], rtol=1e-3, atol=2e-6)
        np.testing.assert_allclose(done.delta[PREFIX + n], want_dc[n], rtol=1e-3, atol=2e-6)
        assert done.mean_gradient is not None
        np.testing.assert_allclose(done.mean_gradient[n], want_dc[n] + ci[n], rtol=1e-3, atol=2e-6)


def test_without_the_hint_nothing_changes_and_the_correction_is_gone(
    setup: tuple[Learner, dict[str, np.ndarray]],
) -> None:
    learner, w = setup
    kw = {"epochs": 2, "batch_size": N, "seed": 0}
    zeros = {n: np.zeros_like(v) for n, v in w.items()}
    plain = train_task(learner, "a", w, {}, **kw)  # type: ignore[arg-type]
    with_zero_c = train_task(learner, "a", w, {HINT: control_to_hint(zeros)}, **kw)  # type: ignore[arg-type]
    biased = {n: np.full(v.shape, 0.5, np.float32) for n, v in w.items()}
    corrected = train_task(learner, "a", w, {HINT: control_to_hint(biased)}, **kw)  # type: ignore[arg-type]
    again = train_task(learner, "a", w, {}, **kw)  # type: ignore[arg-type]
    assert plain.mean_gradient is None and sorted(plain.delta) == sorted(w)
    for n in w:  # c = cᵢ = 0 is plain local training
        np.testing.assert_allclose(with_zero_c.delta[n], plain.delta[n], rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(again.delta[n], plain.delta[n])
    # A constant +0.5 in every gradient moves every weight down by about K·η·0.5 more.
    shift = float(np.mean(corrected.delta["fc1.bias"] - plain.delta["fc1.bias"]))
    assert shift == pytest.approx(-2 * LR * 0.5, rel=0.05)


@pytest.mark.parametrize(
    ("hint", "match"),
    [
        ({"nope": [b"\0" * 4]}, "does not have"),
        ({"fc1.bias": [b"\0" * 4]}, "bytes"),
        ({"fc1.bias": "x"}, "list of byte strings"),
        ("x", "map tensor names"),
    ],
)
def test_a_bad_control_hint_is_refused_by_name(
    setup: tuple[Learner, dict[str, np.ndarray]], hint: object, match: str
) -> None:
    learner, w = setup
    with pytest.raises(ValueError, match=match):
        train_task(learner, "a", w, {HINT: hint}, epochs=1, batch_size=N, seed=0)
