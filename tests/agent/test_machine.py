"""The agent machine against a real ground machine, wired in-process (no sockets): tasks, durable
updates, chunked uploads resumed across contacts, restarts, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.agent.machine import AgentConfig, AgentMachine
from orbitfl.agent.outbox import Outbox
from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import (
    GROUND,
    Action,
    ApplyModel,
    LinkDown,
    LinkUp,
    MessageReceived,
    Send,
    StartTraining,
    Tick,
    TrainingDone,
)
from orbitfl.wire import Ack, Chunk, Hello, Nack, Reason, Update, decode, encode

MODEL = {"w": np.zeros((200, 100), np.float32), "b": np.zeros(100, np.float32)}  # ~80 kB as fp32
CHUNK = 16 << 10


class Pair:
    """One agent and one ground, with a switch that drops frames in flight when the link is cut."""

    def __init__(self, tmp: Path, **ground_cfg: Any) -> None:
        self.tmp = tmp
        ground_cfg.setdefault("min_updates", 100)
        ground_cfg.setdefault("chunk_bytes", CHUNK)
        self.gcfg = GroundConfig(**ground_cfg)
        self.g = GroundMachine(GroundStore(tmp / "g"), self.gcfg, MODEL)
        self.acfg = AgentConfig("a1", chunk_bytes=CHUNK, window=2)
        self.a = AgentMachine(Outbox(tmp / "a1.db"), self.acfg)
        self.to_ground: list[bytes] = []
        self.to_agent: list[bytes] = []
        self.trainings: list[StartTraining] = []
        self.applied: list[ApplyModel] = []
        self.uplink_frames: list[Any] = []

    def restart_agent(self) -> None:
        self.a.outbox.close()
        self.a = AgentMachine(Outbox(self.tmp / "a1.db"), self.acfg)
        self.to_ground.clear()
        self.to_agent.clear()

    def restart_ground(self) -> None:
        self.g.store.close()
        self.g = GroundMachine(GroundStore(self.tmp / "g"), self.gcfg, MODEL)
        self.to_ground.clear()
        self.to_agent.clear()

    def agent(self, acts: list[Action]) -> None:
        for x in acts:
            if isinstance(x, Send):
                assert x.peer == GROUND
                self.to_ground.append(x.frame)
                self.uplink_frames.append(decode(x.frame))
            elif isinstance(x, StartTraining):
                self.trainings.append(x)
            elif isinstance(x, ApplyModel):
                self.applied.append(x)

    def ground(self, acts: list[Action]) -> None:
        for x in acts:
            if isinstance(x, Send):
                assert x.peer == "a1"
                self.to_agent.append(x.frame)

    def pump(self, now: float = 0.0, max_frames: int | None = None) -> int:
        """Deliver frames both ways until quiet, or until ``max_frames`` uplink frames went."""
        n = 0
        while self.to_ground or self.to_agent:
            if self.to_ground:
                if max_frames is not None and n >= max_frames:
                    return n
                n += 1
                self.ground(self.g.handle(MessageReceived("a1", self.to_ground.pop(0)), now))
            if self.to_agent:
                self.agent(self.a.handle(MessageReceived(GROUND, self.to_agent.pop(0)), now))
        return n

    def cut(self, now: float) -> None:
        self.to_ground.clear()
        self.to_agent.clear()
        self.agent(self.a.handle(LinkDown(), now))

    def train(self, value: float, now: float = 0.0) -> None:
        t = self.trainings.pop(0)
        delta = {k: np.full(v.shape, value, np.float32) for k, v in t.weights.items()}
        self.agent(self.a.handle(TrainingDone(t.task.task_id, delta, 5, {"loss": 0.5}), now))


def test_task_training_update_ack_cycle(tmp_path: Path) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    assert isinstance(p.uplink_frames[0], Hello) and p.uplink_frames[0].model_version is None
    p.pump()
    assert len(p.applied) == 1 and p.applied[0].version == 0 and p.a.version == 0
    assert len(p.trainings) == 1 and p.trainings[0].task.round == 1
    p.train(0.5)
    assert p.a.outbox.pending() == 1  # durable before anything is sent
    p.pump()
    assert p.a.outbox.pending() == 0
    assert p.g.strategy.updates == 1
    assert any(isinstance(f, Chunk) for f in p.uplink_frames)  # 80 kB update went in chunks


def test_upload_cut_mid_transfer_resumes_from_confirmed_offset(tmp_path: Path) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(1.0)
    p.pump(max_frames=3)  # a few chunks get through, then the contact ends
    p.cut(10.0)
    head = p.a.outbox.head()
    assert head is not None and 0 < head.acked_offset < len(head.frame)
    resumed_at = head.acked_offset
    p.uplink_frames.clear()
    p.agent(p.a.handle(LinkUp(), 5000.0))  # next contact, over an hour later
    chunks = [f for f in p.uplink_frames if isinstance(f, Chunk)]
    assert chunks and chunks[0].offset == resumed_at  # not from zero
    p.pump(5000.0)
    assert p.a.outbox.pending() == 0 and p.g.strategy.updates == 1
    sent = sum(len(f.data) for f in p.uplink_frames if isinstance(f, Chunk))
    assert sent == len(head.frame) - resumed_at


def test_agent_restart_resends_same_update_id_and_ground_counts_once(tmp_path: Path) -> None:
    p = Pair(tmp_path, chunk_bytes=1 << 20)  # whole frames, so the ACK alone can be lost
    p.a.cfg.chunk_bytes = 1 << 20
    p.acfg.chunk_bytes = 1 << 20
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(2.0)
    (uid,) = [f.id for f in p.uplink_frames if isinstance(f, Update)]
    p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), 1.0))  # ground ingests ...
    p.to_agent.clear()  # ... and the ACK is lost when the board reboots
    p.restart_agent()
    assert p.a.outbox.pending() == 1
    p.uplink_frames.clear()
    p.agent(p.a.handle(LinkUp(), 100.0))
    p.pump(100.0)
    assert [f.id for f in p.uplink_frames if isinstance(f, Update)] == [uid]
    assert p.a.outbox.pending() == 0
    assert p.g.strategy.updates == 1 and p.g.duplicates == 1


def test_ground_restart_mid_upload_then_transfer_completes(tmp_path: Path) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(1.0)
    p.pump(max_frames=3)
    p.restart_ground()  # the ground forgets partial transfers; the agent still believes its offset
    p.agent(p.a.handle(LinkDown(), 1.0))
    p.agent(p.a.handle(LinkUp(), 2.0))
    p.pump(2.0)
    assert p.a.outbox.pending() == 0 and p.g.strategy.updates == 1


def test_retransmit_after_silence(tmp_path: Path) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(1.0)
    p.to_ground.clear()  # everything sent is lost, but the link stays 'up'
    p.agent(p.a.handle(Tick(), 5.0))
    assert not p.to_ground or all(not isinstance(decode(f), Chunk) for f in p.to_ground)
    p.agent(p.a.handle(Tick(), 31.0))  # retransmit timer
    assert any(isinstance(decode(f), Chunk) for f in p.to_ground)
    p.pump(31.0)
    assert p.a.outbox.pending() == 0


def test_idle_agent_sends_only_news_and_a_rare_keepalive(tmp_path: Path) -> None:
    """On a radio an idle byte is taken from updates: once the ground knows the agent's model
    version, idling sends nothing until keepalive_seconds, then one HEARTBEAT; never while unlinked."""
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    keep = p.a.cfg.keepalive_seconds
    assert keep is not None
    p.uplink_frames.clear()
    for t in range(20, int(keep), 20):
        p.agent(p.a.handle(Tick(), float(t)))
    assert p.uplink_frames == []  # the HELLO and the model's HEARTBEAT already said it all
    p.agent(p.a.handle(Tick(), keep + 1.0))
    assert [f.TYPE for f in p.uplink_frames] == ["HEARTBEAT"]
    p.uplink_frames.clear()
    p.agent(p.a.handle(Tick(), keep + 30.0))
    assert p.uplink_frames == []
    p.cut(keep + 31.0)
    p.agent(p.a.handle(Tick(), 3 * keep))
    assert p.uplink_frames == []  # nothing is sent while unlinked


def test_keepalive_must_not_be_shorter_than_heartbeat() -> None:
    with pytest.raises(ValueError, match="keepalive_seconds"):
        AgentConfig("a1", heartbeat_seconds=30.0, keepalive_seconds=10.0)
    assert AgentConfig("a1", keepalive_seconds=None).keepalive_seconds is None


@pytest.mark.parametrize(
    ("reason", "kept"), [(Reason.STALE, False), (Reason.NON_FINITE, False), (Reason.BUSY, True)]
)
def test_nack_drops_only_for_permanent_reasons(tmp_path: Path, reason: Reason, kept: bool) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(1.0)
    head = p.a.outbox.head()
    assert head is not None
    p.to_ground.clear()
    p.agent(
        p.a.handle(MessageReceived(GROUND, encode(Nack("ground:x", head.update_id, reason.value, "t"))), 1.0)
    )
    assert (p.a.outbox.pending() == 1) is kept


def test_garbage_from_ground_is_refused_not_crashed(tmp_path: Path) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.uplink_frames.clear()
    p.agent(p.a.handle(MessageReceived(GROUND, b"\xc1not msgpack"), 0.0))
    (n,) = [f for f in p.uplink_frames if isinstance(f, Nack)]
    assert n.reason == Reason.MALFORMED.value
    assert p.a.refused == {"malformed": 1}
    p.agent(p.a.handle(MessageReceived(GROUND, encode(Ack("ground:1", "a1:999"))), 0.0))  # unknown ref


def test_new_model_arrives_as_exact_delta(tmp_path: Path) -> None:
    p = Pair(tmp_path, min_updates=1)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(0.25)
    p.pump()  # closes round 1: the ground sends round 2's task with v1 as a delta from v0
    assert p.g.version == 1 and p.a.version == 1
    for k in MODEL:
        assert p.a.weights[k].tobytes() == p.g.global_model[k].tobytes()
    assert p.applied[-1].version == 1
    assert p.trainings and p.trainings[-1].task.round == 2
    held = Outbox(tmp_path / "a1.db").load_model()
    assert held is not None and held[0] == 1


def test_bad_agent_config() -> None:
    for bad in ("", "a:b", "x" * 200):
        with pytest.raises(ValueError):
            AgentConfig(bad)


def test_compressed_recipe_with_error_feedback_state_kept_across_restart(tmp_path: Path) -> None:
    recipe = "topk:0.05+ef | quant:8 | zstd"
    p = Pair(tmp_path, recipe=recipe, min_updates=1)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(0.5)
    (u,) = [f for f in p.uplink_frames if isinstance(f, Update)]  # small enough to go whole
    stored = p.a.outbox.get(f"codec_state/{recipe}")
    assert stored is not None  # the residual that produced the queued update is durable with it
    residual = p.a.codec_state[recipe].residuals["w"].copy()
    assert np.abs(residual).sum() > 0  # top-k left most of the delta in the residual
    p.pump()
    assert p.g.strategy.updates == 0 and p.g.version == 1  # round 1 closed with the update
    p.restart_agent()
    p.agent(p.a.handle(LinkUp(), 10.0))
    p.pump(10.0)
    assert p.trainings
    state = p.a._codec_state(recipe, [])
    np.testing.assert_array_equal(state.residuals["w"], residual)
    assert len(encode(u)) < sum(v.nbytes for v in MODEL.values()) / 10  # vs the float32 update


def test_mutated_frames_from_the_ground_never_raise(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    p = Pair(tmp_path, chunk_bytes=1 << 20)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), 0.0))  # HELLO
    (task_frame,) = p.to_agent  # TASK with the whole model, in one frame
    p.to_agent.clear()
    for _ in range(300):
        b = bytearray(task_frame)
        for i in rng.integers(0, len(b), size=int(rng.integers(1, 6))):
            b[i] = int(rng.integers(256))
        if rng.random() < 0.3:
            b = b[: int(rng.integers(1, len(b)))]
        p.agent(p.a.handle(MessageReceived(GROUND, bytes(b)), 1.0))  # must not raise
    p.agent(p.a.handle(MessageReceived(GROUND, task_frame), 2.0))
    assert p.a.version == 0 and p.trainings  # a task was taken (perhaps a still-valid mutant)
    for k, v in p.g.global_model.items():  # and the model is the ground's, bit for bit (digest)
        assert p.a.weights[k].tobytes() == v.tobytes()
    assert sum(p.a.refused.values()) > 100


def test_model_download_cut_mid_transfer_resumes_in_next_contact(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    p = Pair(tmp_path, min_updates=1)
    p.g.global_model = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in MODEL.items()}
    p.g.store.save_model(0, p.g.global_model, 0.0)  # incompressible weights: the TASK needs chunks
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), 0.0))  # HELLO -> TASK in chunks
    first = [decode(f) for f in p.to_agent]
    assert first and all(isinstance(c, Chunk) for c in first)
    for _ in range(4):  # a few chunks arrive and are confirmed, then the contact ends
        p.agent(p.a.handle(MessageReceived(GROUND, p.to_agent.pop(0)), 1.0))
        while p.to_ground:
            p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), 1.0))
    held = next(iter(p.a.reasm.transfers.values())).next_offset
    assert held > 0
    p.cut(2.0)
    p.agent(p.a.handle(LinkUp(), 4000.0))
    p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), 4000.0))  # HELLO again
    # The ground first asks where the agent stands (an empty chunk), then resumes exactly there.
    (probe,) = [decode(f) for f in p.to_agent]
    assert isinstance(probe, Chunk) and probe.transfer == first[0].transfer and probe.data == b""
    p.agent(p.a.handle(MessageReceived(GROUND, p.to_agent.pop(0)), 4000.0))
    p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), 4000.0))  # its CHUNK_ACK
    resumed = [decode(f) for f in p.to_agent]
    assert resumed and all(isinstance(c, Chunk) and c.transfer == first[0].transfer for c in resumed)
    assert min(c.offset for c in resumed) == held
    p.pump(4000.0)
    assert p.a.version == 0 and p.trainings
    for k, v in p.g.global_model.items():
        assert p.a.weights[k].tobytes() == v.tobytes()


def test_agent_killed_mid_upload_restarts_and_completes_once(tmp_path: Path) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(1.0)
    p.pump(max_frames=2)  # part of the upload is through; then the board dies (no LinkDown)
    p.restart_agent()
    assert p.a.outbox.pending() == 1
    p.agent(p.a.handle(LinkUp(), 50.0))
    p.pump(50.0)
    assert p.a.outbox.pending() == 0 and p.g.strategy.updates == 1 and p.g.accepted == 1


def test_ground_restart_keeps_partial_upload_in_its_spool(tmp_path: Path) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(1.0)
    p.uplink_frames.clear()
    p.pump(max_frames=3)  # three chunks reach the ground, then it is killed
    p.restart_ground()
    p.agent(p.a.handle(LinkDown(), 1.0))
    p.agent(p.a.handle(LinkUp(), 2.0))
    p.pump(2.0)
    assert p.a.outbox.pending() == 0 and p.g.strategy.updates == 1
    assert len({f.transfer for f in p.uplink_frames if isinstance(f, Chunk)}) == 1
    sent = sum(len(f.data) for f in p.uplink_frames if isinstance(f, Chunk))
    total = next(f.total for f in p.uplink_frames if isinstance(f, Chunk))
    assert sent < total + 3 * CHUNK  # the spooled chunks were not all sent again
    assert not any((tmp_path / "g" / "spool").iterdir())  # spool cleaned after completion


def test_agent_follows_a_compressed_downlink_bit_for_bit(tmp_path: Path) -> None:
    from orbitfl.wire import Task

    p = Pair(tmp_path, min_updates=1, downlink_recipe="quant:8 | zstd", chunk_bytes=1 << 20)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    encodings = []
    rng = np.random.default_rng(9)
    for r in range(3):
        t = p.trainings.pop(0)
        delta = {k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in t.weights.items()}
        p.agent(p.a.handle(TrainingDone(t.task.task_id, delta, 5), float(r)))
        while p.to_ground or p.to_agent:
            while p.to_ground:
                p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), float(r)))
            for f in list(p.to_agent):
                m = decode(f)
                if isinstance(m, Task) and m.model is not None:
                    encodings.append(m.model.encoding)
            while p.to_agent:
                p.agent(p.a.handle(MessageReceived(GROUND, p.to_agent.pop(0)), float(r)))
        assert p.a.version == p.g.version == r + 1
        for k, v in p.g.global_model.items():
            assert p.a.weights[k].tobytes() == v.tobytes()
    assert encodings == ["codec", "codec", "codec"]


def _updates(p: Pair) -> list[Update]:
    return [f for f in p.uplink_frames if isinstance(f, Update)]


def test_the_agent_sends_the_compact_form_the_task_offers_and_the_round_closes(tmp_path: Path) -> None:
    recipe = "topk:0.05+ef | quant:8 | zstd"
    sizes = {}
    for offer in (True, False):
        p = Pair(tmp_path / str(offer), recipe=recipe, min_updates=1, compact_updates=offer)
        p.agent(p.a.handle(LinkUp(), 0.0))
        p.pump()
        assert (p.trainings[0].task.compact is not None) == offer
        p.train(0.5)
        (u,) = _updates(p)
        assert u.payload["codec"] == ("compact" if offer else "pipeline")
        p.pump()
        assert p.g.version == 1 and p.g.accepted == 1  # the round closed on it
        sizes[offer] = len(encode(u))
    # Same delta, same codec bytes: the compact frame drops the names, shapes and recipe texts.
    assert sizes[True] < sizes[False] - 2 * len(recipe)


def test_the_agent_sends_the_form_the_offer_names_and_an_older_ground_gets_form_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orbitfl.ground.machine as gm
    from orbitfl.wire.compact import FORM

    recipe = "dgc:0.05 | sign | zstd"
    sizes = {}
    for form in (1, FORM):
        monkeypatch.setattr(gm, "COMPACT_FORM", form)  # a ground of before form 2 offers no "f"
        p = Pair(tmp_path / str(form), recipe=recipe, min_updates=1)
        p.agent(p.a.handle(LinkUp(), 0.0))
        p.pump()
        task = p.trainings[0].task
        assert task.compact is not None and task.compact.form == form
        p.train(0.5)
        (u,) = _updates(p)
        assert u.payload["codec"] == "compact" and u.payload.get("f", 1) == form
        assert u.omit_task_id == (form >= 2) and u.task_id == task.task_id
        p.pump()
        assert p.g.version == 1 and p.g.accepted == 1  # the round closed on it
        sizes[form] = len(encode(u))
    assert sizes[FORM] < sizes[1] - len("task_id")


def test_an_offer_for_another_model_layout_gets_the_full_form(tmp_path: Path) -> None:
    from orbitfl.wire.compact import Layout

    p = Pair(tmp_path, recipe="quant:8 | zstd", min_updates=1)
    layout = p.g.layout
    p.g.layout = Layout(layout.names, layout.shapes, layout.dtypes, b"\x00" * 8)  # a ground of another model
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.g.layout = layout
    t = p.trainings.pop(0)
    delta = {k: np.full(v.shape, 0.5, np.float32) for k, v in t.weights.items()}
    acts = p.a.handle(TrainingDone(t.task.task_id, delta, 5, {"loss": 0.5}), 0.0)
    assert [a for a in acts if getattr(a, "name", "") == "compact_declined"]
    p.agent(acts)
    (u,) = _updates(p)
    assert u.payload["codec"] == "pipeline"
    p.pump()
    assert p.g.version == 1  # the full form was accepted


def test_agent_says_hello_in_full_once_then_short_and_in_full_to_a_ground_that_forgot(
    tmp_path: Path,
) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    first = p.uplink_frames[0]
    assert isinstance(first, Hello) and first.digest is None and first.software
    p.pump()
    p.train(0.5)
    p.pump()
    p.cut(10.0)
    p.uplink_frames.clear()
    p.agent(p.a.handle(LinkUp(), 5000.0))
    second = p.uplink_frames[0]
    assert isinstance(second, Hello) and second.digest is not None and not second.software
    assert len(encode(second)) < len(encode(first))
    p.pump(5000.0)
    assert not [f for f in p.uplink_frames if isinstance(f, Hello) and f.digest is None]
    assert p.g.peers["a1"].online and not p.a.refused
    # A restarted ground holds no digest: it refuses the short HELLO once and gets the full one.
    p.cut(5010.0)
    p.restart_ground()
    p.uplink_frames.clear()
    p.agent(p.a.handle(LinkUp(), 9000.0))
    p.pump(9000.0)
    hellos = [f for f in p.uplink_frames if isinstance(f, Hello)]
    assert [h.digest is None for h in hellos] == [False, True]
    assert p.g.peers["a1"].online


def test_a_downlink_transfer_is_acked_per_half_window_not_per_chunk(tmp_path: Path) -> None:
    from orbitfl.wire import ChunkAck

    rng = np.random.default_rng(9)
    p = Pair(tmp_path, min_updates=1)
    p.g.global_model = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in MODEL.items()}
    p.g.store.save_model(0, p.g.global_model, 0.0)
    p.agent(p.a.handle(LinkUp(), 0.0))
    downlink: list[Any] = []
    while p.to_ground or p.to_agent:
        if p.to_ground:
            p.ground(p.g.handle(MessageReceived("a1", p.to_ground.pop(0)), 0.0))
        if p.to_agent:
            downlink.append(decode(p.to_agent[0]))
            p.agent(p.a.handle(MessageReceived(GROUND, p.to_agent.pop(0)), 0.0))
    chunks_in = sum(isinstance(f, Chunk) for f in downlink)
    acks = [f for f in p.uplink_frames if isinstance(f, ChunkAck)]
    half = max(1, p.gcfg.window // 2)
    assert p.a.version == 0 and p.trainings  # the whole model arrived, bit for bit
    for k, v in p.g.global_model.items():
        assert p.a.weights[k].tobytes() == v.tobytes()
    assert chunks_in >= 5
    assert 1 <= len(acks) <= -(-chunks_in // half) + 1 < chunks_in
    if chunks_in <= p.gcfg.window:
        assert len(acks) == 1  # it fit in the window: acked once, at its end


def test_an_agent_told_its_pass_budget_sends_only_what_fits_and_finishes_next_pass(
    tmp_path: Path,
) -> None:
    p = Pair(tmp_path)
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.train(1.0)  # an ~80 kB update: chunked
    p.cut(10.0)
    budget = 3 * CHUNK + 2000
    p.uplink_frames.clear()
    p.to_ground.clear()
    sizes: list[int] = []
    acts = p.a.handle(LinkUp(budget), 100.0)
    p.agent(acts)
    while p.to_ground or p.to_agent:
        if p.to_ground:
            f = p.to_ground.pop(0)
            sizes.append(len(f))
            p.ground(p.g.handle(MessageReceived("a1", f), 100.0))
        if p.to_agent:
            p.agent(p.a.handle(MessageReceived(GROUND, p.to_agent.pop(0)), 100.0))
    assert sum(sizes) <= budget  # nothing beyond what the pass can carry
    assert p.a.outbox.pending() == 1 and p.g.strategy.updates == 0
    assert sum(isinstance(f, Chunk) and len(f.data) > 0 for f in p.uplink_frames) >= 2
    p.cut(200.0)
    p.agent(p.a.handle(LinkUp(), 5000.0))  # a pass of unknown size: the rest goes
    p.pump(5000.0)
    assert p.a.outbox.pending() == 0 and p.g.strategy.updates == 1


def test_a_whole_update_waits_for_a_pass_it_fits(tmp_path: Path) -> None:
    p = Pair(tmp_path, chunk_bytes=1 << 20)
    p.acfg.chunk_bytes = 1 << 20  # the ~80 kB update goes whole
    p.agent(p.a.handle(LinkUp(), 0.0))
    p.pump()
    p.cut(1.0)
    p.agent(p.a.handle(LinkUp(200_000), 50.0))
    p.pump(50.0)
    p.a.uploader.budget = 50_000  # near the end of the pass: 50 kB of 200 kB left
    p.uplink_frames.clear()
    p.train(1.0, now=60.0)
    p.agent(p.a.handle(Tick(), 200.0))  # long past the retransmit time: still not sent
    assert p.a.outbox.pending() == 1
    assert not [f for f in p.uplink_frames if isinstance(f, Update)]
    p.cut(100.0)
    p.agent(p.a.handle(LinkUp(200_000), 5000.0))
    p.pump(5000.0)
    assert [f for f in p.uplink_frames if isinstance(f, Update)]
    assert p.a.outbox.pending() == 0 and p.g.strategy.updates == 1
