"""The ground's admission checks and poisoning guards, on a real machine over a real store: each
bad frame gets its NACK reason, nothing refused reaches the model, and the machine serves on."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from orbitfl.ground.admission import Guards, delta_norm
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.ground.strategies import FedAvg
from orbitfl.runtime.config import ConfigError, parse_ground
from orbitfl.runtime.events import Log, MessageReceived
from orbitfl.wire import Hello, Update, encode
from orbitfl.wire.payload import encode_payload


def reasons(kit: Any, acts: list[Any]) -> list[str]:
    return [n.reason for n in kit.nacks(acts)]


def raw_update(agent: str, n: int, **over: Any) -> bytes:
    """An UPDATE as a wire map with fields replaced by ``over`` (values no dataclass would take)."""
    t = {"w": np.full((8, 4), 0.1, np.float32), "b": np.full(4, 0.1, np.float32)}
    d = Update(f"{agent}:{n}", f"r1/{agent}", 1, 0, 10, {}, encode_payload("fp32", t)).to_wire()
    d.update(over)
    return bytes(msgpack.packb(d, use_bin_type=True))


def test_the_two_frames_that_killed_the_daemon_get_nacks(kit: Any) -> None:
    g = kit.ground()
    g.rx("a1", kit.hello("a1"))
    assert reasons(kit, g.rx("a1", raw_update("a1", 1, samples=2**64 - 1))) == ["schema"]
    bad_body = {"codec": "pipeline", "recipe": "quant:8", "body": {"v": 1, "chains": [], "tensors": 3.0}}
    assert reasons(kit, g.rx("a1", raw_update("a1", 2, payload=bad_body))) == ["bad_payload"]
    assert kit.acks(g.rx("a1", kit.update_frame("a1", 3, value=0.1)))  # serves on


@pytest.mark.parametrize("mid", ["a1", "a1:", "a1:x", "a1:1.5", "a1:-3", "a2:4"])
def test_update_ids_need_the_agent_and_a_numeric_suffix(kit: Any, mid: str) -> None:
    g = kit.ground()
    g.rx("a1", kit.hello("a1"))
    assert reasons(kit, g.rx("a1", raw_update("a1", 1, id=mid))) == ["bad_id"]


@pytest.mark.parametrize("mid", ["fz", "fz:", "fz:a b", "gz:1"])
def test_hello_ids_without_the_agent_and_a_suffix_are_bad_id(kit: Any, mid: str) -> None:
    g = kit.ground()
    assert reasons(kit, g.rx("fz", encode(Hello(mid, "fz", "test", None, {})))) == ["bad_id"]


def test_round_task_and_recipe_are_checked_against_the_task(kit: Any) -> None:
    g = kit.ground()
    for a in ("a1", "a2"):
        g.rx(a, kit.hello(a))
    # another agent's task, a task never given, the wrong round, another recipe
    assert reasons(kit, g.rx("a1", raw_update("a1", 1, task_id="r1/a2"))) == ["unknown_task"]
    assert reasons(kit, g.rx("a1", raw_update("a1", 2, task_id="r9/a1"))) == ["unknown_task"]
    assert reasons(kit, g.rx("a1", raw_update("a1", 3, round=2))) == ["schema"]
    t = {k: np.zeros(v.shape, np.float32) for k, v in kit.MODEL.items()}
    other = encode_payload("quant:8", t)
    assert reasons(kit, g.rx("a1", raw_update("a1", 4, payload=other))) == ["bad_payload"]
    assert kit.acks(g.rx("a1", kit.update_frame("a1", 5, value=0.1)))


def test_samples_are_capped_by_config_and_by_what_the_agent_registered(kit: Any) -> None:
    g = kit.ground(guards=Guards(max_samples=1000))
    g.rx("a1", kit.hello("a1"))
    g.rx("a2", encode(Hello("a2:h1", "a2", "test", None, {"max_samples": 50})))
    assert reasons(kit, g.rx("a1", kit.update_frame("a1", 1, samples=1001))) == ["schema"]
    assert reasons(kit, g.rx("a2", kit.update_frame("a2", 1, samples=51))) == ["schema"]
    assert kit.acks(g.rx("a1", kit.update_frame("a1", 2, samples=1000, value=0.1)))
    assert kit.acks(g.rx("a2", kit.update_frame("a2", 2, samples=50, value=0.1)))


def test_finite_huge_deltas_neither_poison_nor_move_the_model_beyond_the_bound(kit: Any) -> None:
    g = kit.ground(min_updates=3)
    before = {k: v.copy() for k, v in g.m.global_model.items()}
    bound = g.m.admission.norm_bound()
    for a in ("a1", "a2", "a3", "evil"):
        g.rx(a, kit.hello(a))
    assert reasons(kit, g.rx("evil", kit.update_frame("evil", 1, value=3e38))) == ["norm_bound"]
    # just under the bound is admitted; three of them close the round
    n = sum(v.size for v in kit.MODEL.values())
    edge = 0.999 * bound / math.sqrt(n)
    for a in ("a1", "a2", "evil"):
        assert kit.acks(g.rx(a, kit.update_frame(a, 2, value=edge)))
    assert g.m.version == 1
    step = {k: g.m.global_model[k] - before[k] for k in before}
    assert all(np.isfinite(v).all() for v in g.m.global_model.values())
    assert delta_norm(step) <= bound


def test_the_median_of_recent_norms_bounds_an_outlier(kit: Any) -> None:
    g = kit.ground(guards=Guards(median_min=4, norm_median_ratio=5.0))
    agents = [f"a{i}" for i in range(6)]
    for a in agents:
        g.rx(a, kit.hello(a))
    for a in agents[:4]:
        assert kit.acks(g.rx(a, kit.update_frame(a, 1, value=0.01)))
    # within the model-scale bound, but 20x the median of the accepted ones
    assert reasons(kit, g.rx("a4", kit.update_frame("a4", 1, value=0.2))) == ["norm_bound"]
    assert kit.acks(g.rx("a5", kit.update_frame("a5", 1, value=0.04)))
    # the window survives a restart: the same outlier is refused again
    g.reopen()
    g.rx("a4", kit.hello("a4", 2))
    assert reasons(kit, g.rx("a4", kit.update_frame("a4", 2, value=0.2))) == ["norm_bound"]


def test_a_non_finite_aggregate_is_refused_and_the_previous_weights_kept(tmp_path: Path, kit: Any) -> None:
    # Bounds off and a server step of 4: two admitted finite deltas of 1e38 sum past float32.
    guards = Guards(norm_model_ratio=0, norm_median_ratio=0)
    model = {"w": np.full((8, 4), 1.0, np.float32), "b": np.zeros(4, np.float32)}
    m = GroundMachine(
        GroundStore(tmp_path / "g"), GroundConfig(min_updates=2, guards=guards), model, FedAvg(server_lr=4.0)
    )
    acts: list[Any] = []
    for a in ("a1", "a2"):
        m.handle(MessageReceived(a, kit.hello(a)), 0.0)
        acts += m.handle(MessageReceived(a, kit.update_frame(a, 1, value=1e38)), 0.0)
    assert len(kit.acks(acts)) == 2 and m.version == 1
    assert all(np.array_equal(m.global_model[k], model[k]) for k in model)
    assert any(isinstance(x, Log) and "aggregate refused" in x.text for x in acts)
    assert any(getattr(x, "name", "") == "aggregates_refused" for x in acts)


def test_a_planted_fault_becomes_an_internal_nack_and_the_machine_serves_on(
    kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = kit.ground(min_updates=2)
    g.rx("a1", kit.hello("a1"))
    g.rx("a2", kit.hello("a2"))
    real = g.m.strategy.accumulate
    calls = {"n": 0}

    def faulty(*args: Any, **kw: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("planted fault")
        real(*args, **kw)

    monkeypatch.setattr(g.m.strategy, "accumulate", faulty)
    acts = g.rx("a1", kit.update_frame("a1", 1, value=0.5))  # recorded durably, then the fault
    assert reasons(kit, acts) == ["internal"]
    (line,) = [x.text for x in acts if isinstance(x, Log) and x.level == "ERROR"]
    assert "'a1'" in line and "planted fault" in line and "Traceback" not in line
    # the agent keeps it and resends: counted once, from the store
    (ack,) = kit.acks(g.rx("a1", kit.update_frame("a1", 1, value=0.5)))
    assert ack.duplicate
    assert kit.acks(g.rx("a2", kit.update_frame("a2", 1, value=0.1)))
    assert g.m.version == 1
    assert np.allclose(g.m.global_model["b"], (0.5 + 0.1) / 2)


def test_admission_config_keys_are_validated_by_name(tmp_path: Path) -> None:
    base = {"ground": {"bind": "tcp://127.0.0.1:1", "state_dir": "s", "insecure": True}}
    cfg = parse_ground({**base, "admission": {"max_samples": 5}}, tmp_path)
    assert cfg.admission.max_samples == 5 and cfg.admission.refuse_non_finite_model
    for bad, key in (
        ({"max_samples": 0}, "admission.max_samples"),
        ({"norm_model_ratio": -1.0}, "admission.norm_model_ratio"),
        ({"norm_median": 3.0}, "admission.norm_median"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse_ground({**base, "admission": bad}, tmp_path)
