"""SpaceDML's adaptive LAQ through the agent machine: the trainer's byte budget and curvature
reach the codec, the update fits the budget and the real ground decodes it; missing or bad inputs
are refused at the boundary with errors naming what was wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.agent.machine import AgentConfig, AgentMachine
from orbitfl.agent.outbox import Outbox
from orbitfl.codec import Payload
from orbitfl.codec.inputs import check_encode_inputs
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import (
    GROUND,
    Action,
    Count,
    LinkUp,
    Log,
    MessageReceived,
    Send,
    StartTraining,
    TrainingDone,
)
from orbitfl.wire import Update, decode
from orbitfl.wire.compact import as_full
from orbitfl.wire.payload import decode_payload

MODEL = {"w": np.zeros((200, 100), np.float32), "b": np.zeros(100, np.float32)}  # 20 100 values


class Link:
    """One agent machine and one real ground machine (recipe ``alq``), frames passed in-process."""

    def __init__(self, tmp: Path, recipe: str = "alq") -> None:
        self.g = GroundMachine(GroundStore(tmp / "g"), GroundConfig(recipe=recipe, min_updates=1), MODEL)
        self.a = AgentMachine(Outbox(tmp / "a.db"), AgentConfig("a1", chunk_bytes=1 << 20))
        self.up: list[bytes] = []
        self.down: list[bytes] = []
        self.updates: list[Update] = []
        self.trainings: list[StartTraining] = []
        self.logs: list[Log] = []
        self.counts: list[Count] = []

    def agent(self, acts: list[Action]) -> None:
        for x in acts:
            if isinstance(x, Send):
                self.up.append(x.frame)
                msg = decode(x.frame)
                if isinstance(msg, Update):
                    self.updates.append(msg)
            elif isinstance(x, StartTraining):
                self.trainings.append(x)
            elif isinstance(x, Log):
                self.logs.append(x)
            elif isinstance(x, Count):
                self.counts.append(x)

    def pump(self) -> None:
        while self.up or self.down:
            if self.up:
                for x in self.g.handle(MessageReceived("a1", self.up.pop(0)), 0.0):
                    if isinstance(x, Send):
                        self.down.append(x.frame)
            if self.down:
                self.agent(self.a.handle(MessageReceived(GROUND, self.down.pop(0)), 0.0))

    def start(self) -> StartTraining:
        self.agent(self.a.handle(LinkUp(), 0.0))
        self.pump()
        assert self.trainings, "the ground sent no task"
        return self.trainings.pop(0)

    def done(self, t: StartTraining, delta: dict[str, Any], **kw: Any) -> None:
        self.agent(self.a.handle(TrainingDone(t.task.task_id, delta, 5, **kw), 0.0))


def delta_and_curvature(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    delta = {k: rng.normal(0, 0.01, v.shape).astype(np.float32) for k, v in MODEL.items()}
    curv = {k: (np.abs(rng.normal(0, 1, v.shape)) + 0.1).astype(np.float32) for k, v in MODEL.items()}
    return delta, curv


@pytest.mark.parametrize("budget", [3000, 9000])
def test_alq_update_fits_the_budget_and_the_ground_decodes_it(tmp_path: Path, budget: int) -> None:
    link = Link(tmp_path)
    t = link.start()
    assert t.task.recipe == "alq"
    delta, curv = delta_and_curvature()
    link.done(t, delta, budget_bytes=budget, curvature=curv)
    link.pump()
    assert len(link.updates) == 1
    body = as_full(link.updates[0].payload, link.g.layout, link.g.recipes)["body"]
    size = Payload.from_wire(body).nbytes
    assert size <= budget
    assert size > budget * 0.5  # the budget is used, not ignored
    got = decode_payload(
        link.updates[0].payload,
        {k: v.shape for k, v in MODEL.items()},
        layout=link.g.layout,
        recipes=link.g.recipes,
    )
    flat_d = np.concatenate([delta[k].ravel() for k in sorted(got)])
    flat_g = np.concatenate([got[k].ravel() for k in sorted(got)])
    assert np.corrcoef(flat_d, flat_g)[0, 1] > 0.5  # the ground gets the update, quantized
    assert link.a.outbox.pending() == 0  # acknowledged: the real ground accepted it
    assert link.g.version == 1  # ... and closed the round with it


def test_a_larger_budget_buys_a_more_accurate_update(tmp_path: Path) -> None:
    errs = []
    for budget in (2500, 20000):
        link = Link(tmp_path / str(budget))
        t = link.start()
        delta, curv = delta_and_curvature()
        link.done(t, delta, budget_bytes=budget, curvature=curv)
        got = decode_payload(link.updates[0].payload, layout=link.g.layout, recipes=link.g.recipes)
        errs.append(sum(float(np.sum((got.get(k, 0) - delta[k]) ** 2)) for k in delta))
    assert errs[1] < errs[0]


def refused(link: Link) -> str:
    """The ERROR text of a refused update; nothing may have reached the outbox."""
    assert link.a.outbox.pending() == 0 and not link.updates
    assert any(c.name == "updates_not_encoded" for c in link.counts)
    errors = [x.text for x in link.logs if x.level == "ERROR"]
    assert len(errors) == 1, link.logs
    return errors[0]


def test_alq_without_curvature_is_refused_naming_the_recipe(tmp_path: Path) -> None:
    link = Link(tmp_path)
    t = link.start()
    delta, _ = delta_and_curvature()
    link.done(t, delta, budget_bytes=5000)
    text = refused(link)
    assert "'alq'" in text and "curvature" in text
    assert not link.a.training  # the task is dropped; the ground's deadline reassigns it


def test_alq_without_a_budget_is_refused_naming_the_recipe(tmp_path: Path) -> None:
    link = Link(tmp_path)
    t = link.start()
    delta, curv = delta_and_curvature()
    link.done(t, delta, curvature=curv)
    text = refused(link)
    assert "'alq'" in text and "budget_bytes" in text


@pytest.mark.parametrize("budget", [0, -1, -5000])
def test_bad_budget_is_refused(tmp_path: Path, budget: int) -> None:
    link = Link(tmp_path)
    t = link.start()
    delta, curv = delta_and_curvature()
    link.done(t, delta, budget_bytes=budget, curvature=curv)
    assert f"budget_bytes must be > 0, got {budget}" in refused(link)


def test_budget_too_small_for_anything_is_refused(tmp_path: Path) -> None:
    link = Link(tmp_path, recipe="qsgd:8")  # a fixed codec over its budget is refused, not truncated
    t = link.start()
    delta, _ = delta_and_curvature()
    link.done(t, delta, budget_bytes=1000)
    assert "over budget_bytes=1000" in refused(link)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: {**c, "extra": np.ones(3, np.float32)}, "not in the update: \\['extra'\\]"),
        (lambda c: {"w": c["w"]}, "needs curvature for \\['b'\\]"),
        (lambda c: {**c, "b": np.ones(99, np.float32)}, "curvature\\['b'\\] has shape \\(99,\\)"),
        (lambda c: {**c, "b": np.full(100, np.nan, np.float32)}, "finite and > 0"),
        (lambda c: {**c, "w": np.zeros((200, 100), np.float32)}, "finite and > 0"),
        (lambda c: {**c, "w": -c["w"]}, "finite and > 0"),
    ],
)
def test_bad_curvature_is_refused_at_the_boundary(tmp_path: Path, change: Any, match: str) -> None:
    link = Link(tmp_path)
    t = link.start()
    delta, curv = delta_and_curvature()
    link.done(t, delta, budget_bytes=5000, curvature=change(curv))
    import re

    assert re.search(match, refused(link))


def test_check_encode_inputs_types() -> None:
    delta, curv = delta_and_curvature()
    with pytest.raises(TypeError, match="budget_bytes must be an int"):
        check_encode_inputs("alq", delta, curv, True)
    with pytest.raises(TypeError, match="budget_bytes must be an int"):
        check_encode_inputs("alq", delta, curv, 5000.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="curvature\\['w'\\] must be a float numpy array"):
        check_encode_inputs("alq", delta, {**curv, "w": np.ones((200, 100), np.int32)}, 5000)
    with pytest.raises(TypeError, match="mapping"):
        check_encode_inputs("alq", delta, [1, 2], 5000)  # type: ignore[arg-type]
    # a recipe that does not use curvature accepts none, and takes a float64 one as float32
    assert check_encode_inputs("qsgd:8", delta, None, None) is None
    got = check_encode_inputs("laq:4", delta, {k: v.astype(np.float64) for k, v in curv.items()}, None)
    assert got is not None and all(v.dtype == np.float32 for v in got.values())
