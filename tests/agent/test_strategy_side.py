"""The agent's part of each strategy (agent/strategy_side.py), which the agent daemon and the
simulator both call: FedProx's proximal term on the real trainer, EMS-FL's affinity report and
expert-only training, partial block choice under a budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitfl.agent.backends import open_trainer
from orbitfl.agent.learner import Learner
from orbitfl.agent.strategy_side import PartialHint, PartialSender, capabilities, train_task
from orbitfl.data.datasets import load
from orbitfl.models.artifacts import build_artifacts
from orbitfl.models.zoo import build, get_weights


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load("digits", seed=0)
    return np.ascontiguousarray(d.x_train[:400], np.float32), d.y_train[:400]


def _learner(
    tmp: Path, model: str, digits: tuple[np.ndarray, np.ndarray]
) -> tuple[Learner, dict[str, np.ndarray]]:
    spec = build(model)
    build_artifacts(spec, tmp / model)
    return Learner(open_trainer(tmp / model), *digits), get_weights(spec.model)


def _norm(d: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in d.values())))


def test_fedprox_term_pulls_local_training_towards_the_global_model(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    learner, w = _learner(tmp_path, "mlp", digits)
    kw = {"epochs": 3, "batch_size": 32, "seed": 1}
    plain = train_task(learner, "a", w, {}, **kw)
    prox = train_task(learner, "a", w, {"proximal_mu": 5.0}, **kw)
    assert _norm(prox.delta) < 0.8 * _norm(plain.delta)
    again = train_task(learner, "a", w, {"proximal_mu": 0.0}, **kw)  # the term is gone again
    assert _norm(again.delta) > 0.9 * _norm(prox.delta) / 0.8
    with pytest.raises(ValueError, match="proximal_mu"):
        train_task(learner, "a", w, {"proximal_mu": -1.0}, **kw)


def test_emsfl_agent_reports_affinity_and_trains_only_its_experts(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    learner, w = _learner(tmp_path, "moe", digits)
    caps = capabilities(w, digits[0])
    assert len(caps["affinity"]) == 4 and abs(sum(caps["affinity"]) - 1.0) < 1e-6
    assert capabilities({"w": np.zeros(3, np.float32)}, digits[0]) == {}
    done = train_task(learner, "sat-1", w, {"experts": {"sat-1": [2]}}, epochs=1, batch_size=32, seed=0)
    assert sorted(done.delta) == sorted(k for k in w if k.startswith(("expert.2.", "router.")))
    assert {f"affinity/{e}" for e in range(4)} <= set(done.metrics)
    everything = train_task(learner, "sat-9", w, {"experts": {"sat-1": [2]}}, epochs=1, batch_size=32, seed=0)
    assert set(everything.delta) == set(w)  # no assignment for this agent: it trains everything


def test_partial_sender_keeps_to_the_fraction_and_the_budget() -> None:
    rng = np.random.default_rng(0)
    delta = {
        "w": rng.standard_normal((64, 128)).astype(np.float32),
        "b": rng.standard_normal(128).astype(np.float32),
    }
    total = sum(v.size for v in delta.values())
    s = PartialSender()
    quarter = s.select(delta, PartialHint(block=256, fraction=0.25), "fp32", None)
    sent = sum(int(np.count_nonzero(v)) for v in quarter.values())
    assert 0.15 * total < sent <= 0.25 * total
    tight = s.select(delta, PartialHint(block=256, fraction=1.0), "fp32", 4 * 1024)
    assert 0 < sum(int(np.count_nonzero(v)) for v in tight.values()) <= 1024
    assert s.select(delta, PartialHint(fraction=1.0), "fp32", None) == delta
    with pytest.raises(ValueError, match="fraction"):
        PartialHint.parse({"fraction": 2.0})
