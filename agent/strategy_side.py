"""The agent's part of each aggregation strategy, one copy for the agent daemon and the simulator.

The ground's strategy says in TASK hints what it needs from an agent (``Strategy.task_hints``):

- ``experts`` (EMS-FL): agent id -> the experts it trains; the agent trains and uploads only those
  and the shared router (:func:`trainable_for`); in HELLO it reports its router affinity, the mean
  gate per expert on its local data (:func:`capabilities`), from which the ground assigns experts;
- ``proximal_mu`` (FedProx): the proximal term's μ, added to the trainer's gradient;
- ``partial`` (SpaceDML partial averaging): send only the blocks that changed most, loss-weighted,
  within a byte budget (:class:`PartialSender`);
- ``scaffold_c`` (SCAFFOLD): the ground's control variate c; the agent trains with c − cᵢ added
  to every gradient, keeps the run's mean gradient as its new cᵢ and sends Δcᵢ with its delta.

alq sizing to the next contact is the codec's (the TrainingDone ``budget_bytes``). Nothing here
knows sockets, clocks or the ground's code: only hints, weights and the learner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from orbitfl.agent.learner import Learner, Trained
from orbitfl.agent.partial import choose_blocks, measure_bytes_per_value
from orbitfl.wire.control import HINT as SCAFFOLD_HINT
from orbitfl.wire.control import PREFIX as CONTROL_PREFIX
from orbitfl.wire.control import control_from_hint

ROUTER = ("router.weight", "router.bias")


def experts_for(hints: Mapping[str, Any], agent_id: str) -> list[int] | None:
    """The experts ``agent_id`` trains according to TASK hints (None: no EMS-FL assignment)."""
    table = hints.get("experts")
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise ValueError("hints['experts'] must map agent ids to lists of expert indices")
    got = table.get(agent_id)
    if got is None:
        return None
    if not isinstance(got, list | tuple) or not all(isinstance(e, int) and e >= 0 for e in got):
        raise ValueError(f"hints['experts'][{agent_id!r}] must be a list of expert indices >= 0, got {got!r}")
    return [int(e) for e in got]


def trainable_for(
    hints: Mapping[str, Any],
    agent_id: str,
    names: Sequence[str],
    shared: Sequence[str] = ("router.",),
    prefix: str = "expert.",
) -> list[str] | None:
    """The parameters ``agent_id`` trains and uploads under EMS-FL: its experts' tensors plus the
    shared ones whose names start with an entry of ``shared`` (e.g. the router); None when the
    hints carry no assignment for it (train everything)."""
    experts = experts_for(hints, agent_id)
    if experts is None:
        return None
    mine = {f"{prefix}{e}." for e in experts}
    known = {n[len(prefix) :].split(".", 1)[0] for n in names if n.startswith(prefix)}
    missing = sorted(e for e in experts if str(e) not in known)
    if missing:
        raise ValueError(f"assigned experts {missing} are not in the model (it has {sorted(known)})")
    return [n for n in names if n.startswith(tuple(mine)) or n.startswith(tuple(shared))]


def proximal_mu(hints: Mapping[str, Any]) -> float:
    """FedProx's μ from TASK hints (0: no proximal term)."""
    mu = hints.get("proximal_mu", 0.0)
    if isinstance(mu, bool) or not isinstance(mu, int | float) or not (math.isfinite(mu) and mu >= 0):
        raise ValueError(f"hints['proximal_mu'] must be a finite number >= 0, got {mu!r}")
    return float(mu)


def scaffold_control(
    hints: Mapping[str, Any], weights: Mapping[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[np.float32]] | None:
    """SCAFFOLD's c from TASK hints, one tensor per model tensor (None: not SCAFFOLD)."""
    raw = hints.get(SCAFFOLD_HINT)
    if raw is None:
        return None
    c = control_from_hint(raw, {k: tuple(np.shape(v)) for k, v in weights.items()})
    missing = sorted(set(weights) - set(c))
    if missing:
        raise ValueError(f"hints[{SCAFFOLD_HINT!r}] lacks tensors {missing[:5]}")
    return c


def _own_control(
    control: Mapping[str, npt.NDArray[Any]] | None, c: Mapping[str, npt.NDArray[np.float32]]
) -> dict[str, npt.NDArray[np.float32]]:
    """The agent's cᵢ shaped like c: zeros at first, or for a tensor it had none for."""
    out: dict[str, npt.NDArray[np.float32]] = {}
    for k, v in c.items():
        mine = None if control is None else control.get(k)
        if mine is not None and np.shape(mine) != v.shape:
            raise ValueError(f"the agent's SCAFFOLD control variate {k!r} does not match the model")
        out[k] = np.zeros_like(v) if mine is None else np.asarray(mine, np.float32)
    return out


def router_affinity(weights: Mapping[str, npt.NDArray[Any]], x: npt.NDArray[Any]) -> list[float] | None:
    """Mean router probability per expert, softmax(x Wᵀ + b), over the local samples ``x``; None
    for a model without a router (``router.weight``, ``router.bias``)."""
    if not all(k in weights for k in ROUTER) or len(x) == 0:
        return None
    flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    z = flat @ np.asarray(weights["router.weight"], np.float32).T + np.asarray(
        weights["router.bias"], np.float32
    )
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    gates = e / e.sum(axis=1, keepdims=True)
    return [float(v) for v in gates.astype(np.float64).mean(axis=0)]


def capabilities(weights: Mapping[str, npt.NDArray[Any]], x: npt.NDArray[Any]) -> dict[str, Any]:
    """What an agent says about its strategy side in HELLO: EMS-FL's router affinity, if any."""
    aff = router_affinity(weights, x)
    return {} if aff is None else {"affinity": aff}


def train_task(
    learner: Learner,
    agent_id: str,
    weights: Mapping[str, npt.NDArray[Any]],
    hints: Mapping[str, Any],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    max_batches: int | None = None,
    control: Mapping[str, npt.NDArray[Any]] | None = None,
) -> Trained:
    """Train one task the way its strategy asks: only the assigned experts (EMS-FL), with the
    proximal term (FedProx), with SCAFFOLD's correction (``control``: the agent's cᵢ, None at
    first; the new cᵢ comes back as ``Trained.mean_gradient`` for the caller to keep). The metrics
    carry the router affinity after training, so the ground can follow how an agent's data leans."""
    keep = trainable_for(hints, agent_id, list(weights))
    c = scaffold_control(hints, weights)
    correction = None
    if c is not None:
        if keep is not None:
            raise ValueError("SCAFFOLD and an EMS-FL expert assignment cannot be combined")
        mine = _own_control(control, c)
        correction = {k: c[k] - mine[k] for k in c}
    done = learner.train(
        weights,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        max_batches=max_batches,
        keep=None if keep is None else set(keep),
        proximal_mu=proximal_mu(hints),
        correction=correction,
    )
    if c is not None:
        new = done.mean_gradient
        assert new is not None
        mine = _own_control(control, c)
        for k in c:
            # Tensors the trainer keeps frozen have no gradient: their cᵢ stays.
            new.setdefault(k, mine[k])
            done.delta[CONTROL_PREFIX + k] = (new[k] - mine[k]).astype(np.float32)
    aff = router_affinity(learner.trainer.get_weights([k for k in ROUTER if k in weights]), learner.x)
    if aff is not None:
        for e, a in enumerate(aff):
            done.metrics[f"affinity/{e}"] = a
    return done


@dataclass(frozen=True)
class PartialHint:
    block: int = 256
    fraction: float = 1.0
    budget_bytes: int = 0
    overhead_bytes: float = 64.0

    @classmethod
    def parse(cls, hint: Any) -> PartialHint | None:
        if hint is None:
            return None
        if not isinstance(hint, Mapping):
            raise ValueError(f"hints['partial'] must be a map, got {type(hint).__name__}")
        block = hint.get("block", 256)
        fraction = hint.get("fraction", 1.0)
        budget = hint.get("budget_bytes", 0)
        overhead = hint.get("overhead_bytes", 64.0)
        if not isinstance(block, int) or block < 0:
            raise ValueError(f"hints['partial']['block'] must be an integer >= 0, got {block!r}")
        if not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
            raise ValueError(f"hints['partial']['fraction'] must be in (0, 1], got {fraction!r}")
        if not isinstance(budget, int) or budget < 0:
            raise ValueError(f"hints['partial']['budget_bytes'] must be an integer >= 0, got {budget!r}")
        if not isinstance(overhead, int | float) or overhead < 0:
            raise ValueError(f"hints['partial']['overhead_bytes'] must be >= 0, got {overhead!r}")
        return cls(block, float(fraction), budget, float(overhead))


class PartialSender:
    """SpaceDML partial weight averaging, agent side: the blocks that changed most (weighted by the
    optimizer's curvature, loss-aware) that fit the byte budget; the rest travel as zeros, which
    the ground's ``partial`` strategy (zero_is_unsent) leaves alone. The budget is the smallest of
    the agent's own (its next contact), the hint's ``budget_bytes`` and ``fraction`` of the whole
    update at the codec's measured bytes per value."""

    def __init__(self) -> None:
        self._bpv: dict[Any, float] = {}

    def bytes_per_value(self, recipe: str, delta: Mapping[str, npt.NDArray[Any]]) -> float:
        key = (recipe, tuple(sorted((k, np.shape(v)) for k, v in delta.items())))
        bpv = self._bpv.get(key)
        if bpv is None:
            bpv = self._bpv[key] = measure_bytes_per_value(recipe, delta)
        return bpv

    def select(
        self,
        delta: Mapping[str, npt.NDArray[Any]],
        hint: PartialHint,
        recipe: str,
        budget_bytes: int | None,
        importance: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> dict[str, npt.NDArray[Any]]:
        bpv = self.bytes_per_value(recipe, delta)
        values = sum(int(np.size(v)) for v in delta.values())
        full = values * bpv + hint.overhead_bytes * len(delta)
        budgets = [hint.fraction * full]
        if hint.budget_bytes:
            budgets.append(float(hint.budget_bytes))
        if budget_bytes:
            budgets.append(float(budget_bytes))
        budget = min(budgets)
        if budget >= full:
            return dict(delta)
        sel = choose_blocks(
            delta, budget, bpv, block=hint.block, overhead_bytes=hint.overhead_bytes, importance=importance
        )
        return dict(sel.tensors(delta))
