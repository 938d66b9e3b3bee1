"""The ground machine on a real store: bad input refused and counted, exactly-once ingest,
durability across a crash between persisting and ACKing, deadlines, silent peers."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import numpy as np
import pytest

from orbitfl.runtime.events import Count, PeerSilent, RoundClosed, Tick
from orbitfl.wire import Limits, Model, Reason, Task, decode, encode
from orbitfl.wire.payload import encode_payload, new_codec_state
from orbitfl.wire.tensors import tensor_to_wire


def counted(actions: list[Any], reason: str) -> bool:
    return any(
        isinstance(a, Count) and a.name == "refused" and ("reason", reason) in a.labels for a in actions
    )


def bad_frames(kit: Any) -> list[tuple[str, bytes, Reason]]:
    m = kit.MODEL
    good = {k: np.full(v.shape, 1.0, np.float32) for k, v in m.items()}

    def upd(n: int, **kw: Any) -> bytes:
        return kit.update_frame("a1", n, **kw)

    nan = dict(good, w=good["w"].copy())
    nan["w"][0, 0] = np.nan
    inf = dict(good, b=np.array([0, 0, np.inf, 0], np.float32))
    raw_bad_dtype = {
        "codec": "fp32",
        "tensors": {
            **{k: tensor_to_wire(v) for k, v in good.items()},
            "w": tensor_to_wire(good["w"].astype(np.float64)),
        },
    }
    return [
        ("malformed msgpack", b"\xc1\x00garbage", Reason.MALFORMED),
        ("unknown type", msgpack.packb({"v": 1, "type": "EXPLOIT", "id": "a1:x"}), Reason.UNKNOWN_TYPE),
        (
            "wrong protocol version",
            msgpack.packb({"v": 2, "type": "UPDATE", "id": "a1:x"}),
            Reason.BAD_VERSION,
        ),
        ("oversize frame", upd(90, tensors={"w": np.zeros((300, 300), np.float32)}), Reason.OVERSIZE),
        ("wrong dtype", upd(91, payload=raw_bad_dtype), Reason.BAD_DTYPE),
        ("wrong shape", upd(92, tensors=dict(good, w=np.ones((4, 8), np.float32))), Reason.BAD_SHAPE),
        ("unknown tensor", upd(93, tensors=dict(good, extra=np.ones(1, np.float32))), Reason.UNKNOWN_TENSOR),
        ("missing tensor", upd(94, tensors={"w": good["w"]}), Reason.MISSING_TENSOR),
        ("NaN", upd(95, tensors=nan), Reason.NON_FINITE),
        ("Inf", upd(96, tensors=inf), Reason.NON_FINITE),
        ("another agent's id", kit.update_frame("a2", 97), Reason.BAD_ID),
        ("future base version", upd(98, base=5), Reason.SCHEMA),
    ]


def test_each_bad_input_gets_its_nack_then_a_good_update_is_accepted(kit: Any) -> None:
    g = kit.ground(limits=Limits(max_frame_bytes=100_000))
    g.rx("a1", kit.hello("a1"))
    for name, frame, reason in bad_frames(kit):
        acts = g.rx("a1", frame)
        ns = kit.nacks(acts)
        assert len(ns) == 1 and ns[0].reason == reason.value, (name, ns)
        assert counted(acts, reason.value), name
        assert not kit.acks(acts), name
    assert g.m.strategy.updates == 0
    assert sum(g.m.refused.values()) == len(bad_frames(kit))
    acts = g.rx("a1", kit.update_frame("a1", 1))
    assert [a.ref for a in kit.acks(acts)] == ["a1:1"]
    assert g.m.strategy.updates == 1 and g.m.accepted == 1


def test_nack_names_the_refused_update(kit: Any) -> None:
    g = kit.ground()
    g.rx("a1", kit.hello("a1"))
    bad = {k: np.full(v.shape, np.nan, np.float32) for k, v in kit.MODEL.items()}
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 5, tensors=bad)))
    assert n.ref == "a1:5" and "NaN" in n.text


def test_update_before_hello_is_refused(kit: Any) -> None:
    g = kit.ground()
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 1)))
    assert n.reason == Reason.NOT_REGISTERED.value


def test_replayed_update_is_acked_again_and_counted_once(kit: Any) -> None:
    g = kit.ground()
    g.rx("a1", kit.hello("a1"))
    f = kit.update_frame("a1", 1)
    assert not kit.acks(g.rx("a1", f))[0].duplicate
    for _ in range(3):
        acts = g.rx("a1", f)
        (a,) = kit.acks(acts)
        assert a.ref == "a1:1" and a.duplicate
        assert any(isinstance(x, Count) and x.name == "updates_duplicate" for x in acts)
    assert g.m.strategy.updates == 1 and g.m.duplicates == 3
    assert g.m.store.round_stats(1)[0] == 1


def test_second_update_of_an_agent_in_one_round_is_refused(kit: Any) -> None:
    g = kit.ground()
    g.rx("a1", kit.hello("a1"))
    g.rx("a1", kit.update_frame("a1", 1))
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 2)))
    assert n.reason == Reason.STALE.value
    assert g.m.strategy.updates == 1


def test_crash_between_persist_and_ack_keeps_the_contribution_once(kit: Any) -> None:
    g = kit.ground(min_updates=3)
    for a in ("a1", "a2"):
        g.rx(a, kit.hello(a))
    g.rx("a1", kit.update_frame("a1", 1, value=1.0, samples=10))
    g.rx("a2", kit.update_frame("a2", 1, value=4.0, samples=30))  # persisted; the ACK is 'lost'
    m = g.reopen()  # the process died before the ACK left
    assert m.strategy.updates == 2
    g.rx("a2", kit.hello("a2", 2))
    (a,) = kit.acks(g.rx("a2", kit.update_frame("a2", 1, value=4.0, samples=30)))  # the agent resends
    assert a.duplicate and m.strategy.updates == 2
    g.rx("a3", kit.hello("a3"))
    acts = g.rx("a3", kit.update_frame("a3", 1, value=0.0, samples=60))
    (rc,) = [x for x in acts if isinstance(x, RoundClosed)]
    assert (rc.updates, rc.samples, rc.version) == (3, 100, 1)
    want = (1.0 * 10 + 4.0 * 30 + 0.0 * 60) / 100
    assert np.allclose(m.global_model["w"], want)
    m2 = g.reopen()
    assert m2.version == 1 and np.allclose(m2.global_model["w"], want)


def test_recovery_from_checkpoint_plus_log_equals_uninterrupted(kit: Any) -> None:
    g = kit.ground(checkpoint_every=2, min_updates=100)
    rng = np.random.default_rng(3)
    for i in range(5):
        a = f"a{i}"
        g.rx(a, kit.hello(a))
        t = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in kit.MODEL.items()}
        g.rx(a, kit.update_frame(a, 1, tensors=t, samples=i + 1))
    ref = g.m.strategy.finalize(g.m.global_model)
    assert (g.root / "ckpt" / "round-000001.msgpack").exists()
    m = g.reopen()
    assert m.strategy.updates == 5
    got = m.strategy.finalize(m.global_model)
    for k in ref:
        assert np.array_equal(ref[k], got[k])


def test_round_closes_at_deadline_and_waits_when_empty(kit: Any) -> None:
    g = kit.ground(round_seconds=10.0, min_updates=5)
    g.rx("a1", kit.hello("a1"), now=0.0)
    assert not [a for a in g.m.handle(Tick(), 11.0) if isinstance(a, RoundClosed)]  # empty: extended
    assert g.m.deadline == 21.0
    g.rx("a1", kit.update_frame("a1", 1), now=12.0)
    acts = g.m.handle(Tick(), 20.0)
    assert not [a for a in acts if isinstance(a, RoundClosed)]
    acts = g.m.handle(Tick(), 21.0)
    (rc,) = [a for a in acts if isinstance(a, RoundClosed)]
    assert rc.round == 1 and rc.updates == 1
    tasks = [m for m in kit.sent(acts, "a1") if isinstance(m, Task)]
    assert tasks and tasks[0].round == 2 and tasks[0].model_version == 1


def test_silent_agent_keeps_its_pending_work_for_hours(kit: Any) -> None:
    g = kit.ground(round_seconds=60.0, min_updates=2, max_staleness=2)
    for a in ("a1", "a2"):
        g.rx(a, kit.hello(a), now=0.0)
    g.m.handle(PeerSilent("a2"), 30.0)
    g.rx("a1", kit.update_frame("a1", 1), now=40.0)
    for t in range(100, 6 * 3600, 600):  # hours of deadlines pass; a1 alone closes nothing more
        g.m.handle(Tick(), float(t))
    assert g.m.version == 1  # round 1 closed at its deadline with a1's update
    # a2 comes back after hours with the update it made on v0: still accepted (staleness 1)
    g.rx("a2", kit.hello("a2", 2, version=0), now=6 * 3600.0)
    acts = g.rx("a2", kit.update_frame("a2", 1, base=0), now=6 * 3600.0 + 1)
    assert kit.acks(acts) and not kit.nacks(acts)


def test_update_older_than_max_staleness_is_refused(kit: Any) -> None:
    g = kit.ground(min_updates=1, max_staleness=0)
    g.rx("a1", kit.hello("a1"))
    g.rx("a1", kit.update_frame("a1", 1))  # closes round 1 -> v1
    g.rx("a2", kit.hello("a2"))
    (n,) = kit.nacks(g.rx("a2", kit.update_frame("a2", 1, base=0, rnd=1)))
    assert n.reason == Reason.STALE.value


def test_hello_gets_a_task_with_the_model_whole_or_as_delta(kit: Any) -> None:
    g = kit.ground(min_updates=1)
    (t,) = [m for m in kit.sent(g.rx("a1", kit.hello("a1"))) if isinstance(m, Task)]
    assert t.model is not None and t.model.encoding == "full" and t.model_version == 0
    g.rx("a1", kit.update_frame("a1", 1))  # -> v1
    (t,) = [m for m in kit.sent(g.rx("a1", kit.hello("a1", 2, version=0))) if isinstance(m, Task)]
    assert t.model is not None and t.model.encoding == "xor" and t.model.base_version == 0
    (t,) = [m for m in kit.sent(g.rx("a2", kit.hello("a2", 1, version=1))) if isinstance(m, Task)]
    assert t.model is None  # holds it already


def test_training_over_sends_the_final_model(kit: Any) -> None:
    g = kit.ground(min_updates=1, rounds=1)
    g.rx("a1", kit.hello("a1"))
    g.rx("a1", kit.update_frame("a1", 1))
    assert g.m.done
    msgs = kit.sent(g.rx("a2", kit.hello("a2")))
    assert any(isinstance(m, Model) and m.model is not None and m.model.version == 1 for m in msgs)
    (n,) = kit.nacks(g.rx("a2", kit.update_frame("a2", 1, base=1, rnd=2)))
    assert n.reason == Reason.STALE.value
    assert g.reopen().done


def test_hello_with_mismatched_id_is_refused(kit: Any) -> None:
    g = kit.ground()
    from orbitfl.wire import Hello

    (n,) = kit.nacks(g.rx("a1", encode(Hello("a2:1", "a1", "x", None, {}))))
    assert n.reason == Reason.BAD_ID.value


def test_bad_config_is_a_value_error() -> None:
    from orbitfl.ground.machine import GroundConfig

    for bad in ({"min_updates": 0}, {"round_seconds": 0.0}, {"rounds": 0}, {"ground_id": "a:b"}):
        with pytest.raises(ValueError):
            GroundConfig(**bad)  # type: ignore[arg-type]


def test_pipeline_payload_without_codec_is_refused_not_crashed(kit: Any) -> None:
    g = kit.ground()
    g.rx("a1", kit.hello("a1"))
    p = {"codec": "pipeline", "recipe": "topk:0.01", "body": {"x": 1}}
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 1, payload=p)))
    assert n.reason in (Reason.BAD_PAYLOAD.value, Reason.SCHEMA.value)
    assert kit.acks(g.rx("a1", kit.update_frame("a1", 2, payload=encode_payload("fp32", kit.MODEL))))


def test_tasks_expire_only_by_explicit_policy(kit: Any) -> None:
    g = kit.ground(task_ttl=100.0, round_seconds=10**6)
    g.rx("a1", kit.hello("a1"), now=0.0)  # task r1/a1 issued at t=0, expires at t=100
    g.rx("a2", kit.hello("a2"), now=0.0)
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 1), now=101.0))
    assert n.reason == Reason.STALE.value and "expired" in n.text
    assert kit.acks(g.rx("a2", kit.update_frame("a2", 1), now=99.0))


RECIPE = "topk:0.25+ef | quant:8 | zstd"


def test_compressed_update_is_decoded_and_accumulated(kit: Any) -> None:
    from orbitfl.codec import Payload, Pipeline

    g = kit.ground(recipe=RECIPE)
    g.rx("a1", kit.hello("a1"))
    rng = np.random.default_rng(5)
    t = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in kit.MODEL.items()}
    pipe = Pipeline.parse(RECIPE)
    payload = encode_payload(RECIPE, t, pipe.new_state())
    assert payload["codec"] == "pipeline"
    assert kit.acks(g.rx("a1", kit.update_frame("a1", 1, payload=payload, samples=4)))
    want = pipe.decode(Payload.from_wire(payload["body"]))
    new = g.m.strategy.finalize(g.m.global_model)
    for k in want:
        np.testing.assert_allclose(new[k], want[k], rtol=1e-6, atol=1e-7)
    assert g.reopen().strategy.updates == 1  # replayed from the log through the codec


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({"w": np.ones((4, 8), np.float32), "b": np.ones(4, np.float32)}, Reason.BAD_SHAPE),
        (
            {"w": np.ones((8, 4), np.float32), "b": np.ones(4, np.float32), "zz": np.ones(2, np.float32)},
            Reason.UNKNOWN_TENSOR,
        ),
        ({"w": np.ones((8, 4), np.float32)}, Reason.MISSING_TENSOR),
    ],
)
def test_bad_compressed_updates_are_refused(kit: Any, tensors: dict[str, Any], reason: Reason) -> None:
    from orbitfl.codec import Pipeline

    g = kit.ground(recipe=RECIPE)
    g.rx("a1", kit.hello("a1"))
    payload = encode_payload(RECIPE, tensors, Pipeline.parse(RECIPE).new_state())
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 1, payload=payload)))
    assert n.reason == reason.value, n
    assert g.m.strategy.updates == 0


def test_ingest_memory_is_o_model_not_o_updates(tmp_path: Any) -> None:
    import tracemalloc

    from orbitfl.ground.machine import GroundConfig, GroundMachine
    from orbitfl.ground.store import GroundStore
    from orbitfl.runtime.events import MessageReceived
    from orbitfl.wire import Hello, Update

    model = {"w": np.zeros((250, 400), np.float32)}  # 100k parameters, 400 kB
    nbytes = model["w"].nbytes
    payload = encode_payload("fp32", {"w": np.full((250, 400), 0.5, np.float32)})

    def peak(n: int, root: Any) -> int:
        tracemalloc.start()
        m = GroundMachine(GroundStore(root), GroundConfig(min_updates=10**6, checkpoint_every=8), model)
        for i in range(n):
            a = f"a{i}"
            m.handle(MessageReceived(a, encode(Hello(f"{a}:h", a, "t", 0, {}))), 0.0)
            m.handle(MessageReceived(a, encode(Update(f"{a}:1", f"r1/{a}", 1, 0, 1, {}, payload))), 0.0)
        assert m.strategy.updates == n
        p = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        m.store.close()
        return p

    small, large = peak(10, tmp_path / "s"), peak(60, tmp_path / "l")
    assert large < 1.3 * small, (small, large)
    assert large < 12 * nbytes, large / nbytes


def test_agent_refusing_a_delta_gets_the_whole_model_once(kit: Any) -> None:
    from orbitfl.wire import Nack as NackMsg

    g = kit.ground(min_updates=1)
    g.rx("a1", kit.hello("a1"))
    g.rx("a1", kit.update_frame("a1", 1))  # -> v1
    (t,) = [m for m in kit.sent(g.rx("a1", kit.hello("a1", 2, version=0))) if isinstance(m, Task)]
    assert t.model is not None and t.model.encoding == "xor"
    refusal = encode(NackMsg("a1:b1.5", t.id, Reason.BAD_PAYLOAD.value, "I do not hold v0"))
    (t2,) = [m for m in kit.sent(g.rx("a1", refusal)) if isinstance(m, Task)]
    assert t2.model is not None and t2.model.encoding == "full"
    assert not [
        m
        for m in kit.sent(g.rx("a1", encode(NackMsg("a1:b1.6", t2.id, "checksum", "x"))))
        if isinstance(m, Task)
    ]  # no loop


def test_chunks_before_hello_are_refused(kit: Any) -> None:
    from orbitfl.transfer import Outbound

    g = kit.ground()
    f = Outbound("a1:1", b"x" * 5000, chunk_bytes=1000).next_chunks(lambda: "a1:b1.1")[0]
    (n,) = kit.nacks(g.rx("a1", f))
    assert n.reason == Reason.NOT_REGISTERED.value


def test_an_authenticated_peer_cannot_speak_as_another_agent(kit: Any) -> None:
    g = kit.ground()
    (n,) = kit.nacks(g.rx("a1", kit.hello("a2")))  # the link proved 'a1'; the HELLO claims 'a2'
    assert n.reason == Reason.BAD_ID.value and "a1" in n.text
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a2", 1)))
    assert n.reason == Reason.NOT_REGISTERED.value
    assert g.m.strategy.updates == 0


def test_codec_downlink_sends_compressed_steps_that_rebuild_the_exact_model(kit: Any) -> None:
    from orbitfl.wire import Hello
    from orbitfl.wire.model_codec import decode_model

    big = {"w": np.zeros((64, 64), np.float32), "b": np.zeros(64, np.float32)}
    g = kit.ground(min_updates=1, downlink_recipe="quant:8 | zstd")
    g.m.store.save_model(0, big, 0.0)
    g.reopen()
    rng = np.random.default_rng(4)
    held = {k: v.copy() for k, v in big.items()}
    for r in (1, 2, 3):
        a = f"u{r}"
        g.rx(a, encode(Hello(f"{a}:h", a, "t", g.m.version, {})))
        t = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in big.items()}
        assert kit.acks(g.rx(a, kit.update_frame(a, 1, tensors=t, base=g.m.version, rnd=r)))
    assert g.m.version == 3
    m = g.reopen()  # steps and residuals are durable
    msgs = kit.sent(g.rx("a1", encode(Hello("a1:h", "a1", "t", 0, {}))))
    (task,) = [x for x in msgs if isinstance(x, Task)]
    blob = task.model
    assert blob is not None and blob.encoding == "codec" and len(blob.steps) == 3 and blob.base_version == 0
    rebuilt = decode_model(blob, held)
    for k in big:
        assert rebuilt[k].tobytes() == m.global_model[k].tobytes()
    from orbitfl.wire.model_codec import encode_model

    full = encode(task)
    whole = len(encode(Task("x", "t", 1, 3, "fp32", {}, None, encode_model(3, m.global_model))))
    assert len(full) < whole  # three 8-bit steps still beat the whole float32 model
    (one,) = [x for x in kit.sent(g.rx("a3", encode(Hello("a3:h", "a3", "t", 2, {})))) if isinstance(x, Task)]
    assert one.model is not None and len(one.model.steps) == 1
    assert len(encode(one)) < 0.35 * whole  # one step: about a quarter of float32
    # an agent that holds a version the ground never stepped from gets the whole model
    (task,) = [
        x for x in kit.sent(g.rx("a2", encode(Hello("a2:h", "a2", "t", None, {})))) if isinstance(x, Task)
    ]
    assert task.model is not None and task.model.encoding == "full"


def test_bad_downlink_recipe_is_a_value_error() -> None:
    from orbitfl.ground.machine import GroundConfig

    with pytest.raises(ValueError):
        GroundConfig(downlink_recipe="no-such-stage:3")


def _compact_frame(kit: Any, agent: str, n: int, recipe: str, value: float = 1.0) -> bytes:
    from orbitfl.wire.compact import Layout, compact_payload

    t = {k: np.full(v.shape, value, np.float32) for k, v in kit.MODEL.items()}
    payload = compact_payload(encode_payload(recipe, t), recipe, Layout.of_tensors(kit.MODEL))
    assert payload is not None
    frame: bytes = kit.update_frame(agent, n, payload=payload)
    return frame


def test_compact_and_full_updates_count_alike_and_replay_after_a_recipe_change(kit: Any) -> None:
    g = kit.ground(recipe="quant:8")
    for a in ("a1", "a2"):
        (task,) = [m for m in kit.sent(g.rx(a, kit.hello(a))) if m.TYPE == "TASK"]
        assert task.compact is not None and task.compact.layout_id == g.m.layout.id
    frame = _compact_frame(kit, "a1", 1, "quant:8", 1.0)
    acts = g.rx("a1", frame)
    assert kit.acks(acts) and any(getattr(x, "name", "") == "updates_compact" for x in acts)
    assert kit.acks(g.rx("a2", kit.update_frame("a2", 1, payload=encode_payload("quant:8", {
        k: np.full(v.shape, 3.0, np.float32) for k, v in kit.MODEL.items()
    }))))  # fmt: skip
    want = g.m.strategy.finalize(g.m.global_model)
    np.testing.assert_allclose(want["w"], 2.0, rtol=1e-2)
    # The operator changes the recipe: the open round's compact update still replays from the log.
    g.cfg = dataclasses.replace(g.cfg, recipe="fp32")
    m = g.reopen()
    assert m.strategy.updates == 2
    for k, v in m.strategy.finalize(m.global_model).items():
        np.testing.assert_array_equal(v, want[k])


def test_form_2_updates_without_a_task_id_are_accepted_beside_form_1_and_full_ones(kit: Any) -> None:
    from orbitfl.wire import Update
    from orbitfl.wire.compact import FORM, Layout, compact_payload

    g = kit.ground(recipe="topk:0.5+ef | sign | zstd", min_updates=3)
    for a in ("a1", "a2", "a3"):
        (task,) = [m for m in kit.sent(g.rx(a, kit.hello(a))) if m.TYPE == "TASK"]
        assert task.compact is not None and task.compact.form == FORM
    recipe = task.recipe
    t = {k: np.full(v.shape, 1.0, np.float32) for k, v in kit.MODEL.items()}
    full = encode_payload(recipe, t, new_codec_state(recipe))
    new = compact_payload(full, recipe, Layout.of_tensors(kit.MODEL), FORM)
    assert new is not None and new["f"] == FORM
    frame = encode(Update("a1:1", "r1/a1", 1, 0, 10, {"loss": 0.5}, new, omit_task_id=True))
    assert b"task_id" not in frame
    acts = g.rx("a1", frame)
    assert kit.acks(acts) and any(getattr(x, "name", "") == "updates_compact" for x in acts)
    # Without a task_id, the round names the task: one never given is refused as before.
    frame = encode(Update("a2:1", "r9/a2", 9, 0, 10, {}, new, omit_task_id=True))
    assert b"task_id" not in frame
    (n,) = kit.nacks(g.rx("a2", frame))
    assert n.reason == Reason.UNKNOWN_TASK.value and "'r9/a2'" in n.text
    # A task_id other than the derived one travels, and the round check still sees it.
    frame = encode(Update("a2:2", "r1/a2", 9, 0, 10, {}, new, omit_task_id=True))
    (n,) = kit.nacks(g.rx("a2", frame))
    assert n.reason == Reason.SCHEMA.value and "round 9 is not task 'r1/a2'" in n.text
    old = compact_payload(full, recipe, Layout.of_tensors(kit.MODEL))  # an older agent's form 1
    assert kit.acks(g.rx("a2", kit.update_frame("a2", 3, payload=old)))
    assert kit.acks(g.rx("a3", kit.update_frame("a3", 1, payload=full)))
    assert g.m.round == 2  # the three closed round 1


def test_compact_updates_that_disagree_with_the_task_or_model_are_refused(kit: Any) -> None:
    from orbitfl.wire.compact import recipe_id

    g = kit.ground(recipe="quant:8")
    g.rx("a1", kit.hello("a1"))
    frame = _compact_frame(kit, "a1", 1, "quant:4")  # another recipe than the task's
    (n,) = kit.nacks(g.rx("a1", frame))
    assert n.reason == Reason.BAD_PAYLOAD.value and "recipe id" in n.text and n.ref == "a1:1"
    frame = _compact_frame(kit, "a1", 2, "quant:8")
    msg = decode(frame)
    msg.payload["lid"] = b"\x01" * 8  # laid out for another model
    (n,) = kit.nacks(g.rx("a1", encode(msg)))
    assert n.reason == Reason.BAD_SHAPE.value and "laid out for model layout" in n.text
    msg.payload.update(lid=g.m.layout.id, t=msg.payload["t"][:1])
    (n,) = kit.nacks(g.rx("a1", encode(msg)))
    assert n.reason == Reason.BAD_SHAPE.value and "holds 1 tensors" in n.text
    msg.payload.update(rid=recipe_id("quant:8"), t=[[[b"\x00"]], [[b"\x00"]]])
    (n,) = kit.nacks(g.rx("a1", encode(msg)))
    assert n.reason in (Reason.BAD_SHAPE.value, Reason.BAD_PAYLOAD.value), n
    assert g.m.strategy.updates == 0


def test_short_hello_stands_for_the_full_one_the_ground_took(kit: Any) -> None:
    from orbitfl.wire import Hello

    full = Hello("a1:h1", "a1", "orbitfl/9", None, {"max_samples": 40, "pending": 0}, "0123abcd")
    g = kit.ground(min_updates=1)
    assert [m for m in kit.sent(g.rx("a1", encode(full))) if isinstance(m, Task)]
    short = Hello("a1:h2", "a1", "orbitfl/9", None, {"max_samples": 40, "pending": 3}, "0123abcd").short()
    assert len(encode(short)) < len(encode(full)) // 2
    (t,) = [m for m in kit.sent(g.rx("a1", encode(short))) if isinstance(m, Task)]
    assert t.task_id == "r1/a1"  # the same task again: the short HELLO registered the agent
    assert g.m._caps["a1"] == {"max_samples": 40, "pending": 3}
    # the registered sample cap came back with it: 41 samples are refused
    (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 1, samples=41)))
    assert n.reason == Reason.SCHEMA.value and "samples" in n.text


@pytest.mark.parametrize(
    "why",
    ["never seen", "capabilities changed", "restarted"],
)
def test_short_hello_the_ground_cannot_expand_is_refused_not_registered(kit: Any, why: str) -> None:
    from orbitfl.wire import Hello

    full = Hello("a1:h1", "a1", "orbitfl/9", None, {"max_samples": 40}, None)
    g = kit.ground(min_updates=1)
    short = full.short()
    if why == "capabilities changed":
        g.rx("a1", encode(full))
        short = Hello("a1:h2", "a1", "orbitfl/9", None, {"max_samples": 41}, None).short()
    elif why == "restarted":
        g.rx("a1", encode(full))
        g.reopen()
    acts = g.rx("a1", encode(short))
    (n,) = kit.nacks(acts)
    assert n.reason == Reason.NOT_REGISTERED.value and n.ref == short.id and "full HELLO" in n.text
    assert not [m for m in kit.sent(acts) if isinstance(m, Task)]
    if why == "never seen":
        (n,) = kit.nacks(g.rx("a1", kit.update_frame("a1", 1)))
        assert n.reason == Reason.NOT_REGISTERED.value
