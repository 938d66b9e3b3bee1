"""Group commit on a real store: what a batch writes is durable only when the batch ends (so its
ACKs must wait for it) and then all of it is; downloads of one version share one encoded model."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import MessageReceived, Send
from orbitfl.transfer import Reassembler, Segments
from orbitfl.wire import Chunk, Hello, Task, decode, decode_as, encode
from orbitfl.wire.model_codec import decode_model


def committed_ids(root: Path) -> set[str]:
    """What another process would find after a crash: committed rows only."""
    db = sqlite3.connect(f"file:{root / 'ground.db'}?mode=ro", uri=True)
    try:
        return {str(r[0]) for r in db.execute("SELECT update_id FROM seen")}
    finally:
        db.close()


def test_updates_in_a_batch_become_durable_together_when_it_ends(kit: Any, tmp_path: Path) -> None:
    g = kit.ground(min_updates=10)
    for a in ("a1", "a2", "a3"):
        g.rx(a, kit.hello(a))
    out: list[Any] = []
    with g.m.store.batch():
        for a in ("a1", "a2", "a3"):
            out += g.rx(a, kit.update_frame(a, 1))
        # All three are accepted (the machine saw each) but none is on disk yet, so none of the
        # ACKs may leave before the batch commits.
        assert len(kit.acks(out)) == 3
        assert committed_ids(g.root) == set()
        # A repeat inside the same batch is still a duplicate: the batch reads its own writes.
        again = g.rx("a1", kit.update_frame("a1", 1))
        assert kit.acks(again)[0].duplicate
    assert committed_ids(g.root) == {"a1:1", "a2:1", "a3:1"}
    assert g.reopen().strategy.updates == 3


def test_a_checkpoint_in_a_batch_counts_only_once_its_rows_commit(kit: Any) -> None:
    g = kit.ground(min_updates=10, checkpoint_every=2)
    for a in ("a1", "a2", "a3"):
        g.rx(a, kit.hello(a))
    with g.m.store.batch():
        g.rx("a1", kit.update_frame("a1", 1, value=1.0))
        g.rx("a2", kit.update_frame("a2", 1, value=2.0))
        # Written, but what another process would load is still no checkpoint: it would count
        # rows a crash could take away.
        assert GroundStore(g.root).load_checkpoint(1) is None
        g.rx("a3", kit.update_frame("a3", 1, value=4.0))
    ck = GroundStore(g.root).load_checkpoint(1)
    assert ck is not None and ck[2]["n"] == 2.0
    m = g.reopen()  # recovery: checkpoint (a1, a2) + the logged a3, each once
    assert m.strategy.updates == 3
    new = m.strategy.finalize(m.global_model)
    assert np.allclose(new["w"], 7.0 / 3.0)


def test_an_exception_in_a_batch_keeps_what_was_accepted_before_it(kit: Any) -> None:
    g = kit.ground(min_updates=10)
    for a in ("a1", "a2"):
        g.rx(a, kit.hello(a))
    with pytest.raises(RuntimeError), g.m.store.batch():
        g.rx("a1", kit.update_frame("a1", 1))
        raise RuntimeError("a bug while handling the next frame")
    assert committed_ids(g.root) == {"a1:1"}
    g.rx("a2", kit.update_frame("a2", 1))  # the store is usable after it
    assert committed_ids(g.root) == {"a1:1", "a2:1"}


def test_agents_downloading_one_version_share_one_encoded_model(tmp_path: Path) -> None:
    model = {"w": np.arange(4096, dtype=np.float32).reshape(64, 64)}
    m = GroundMachine(GroundStore(tmp_path), GroundConfig(chunk_bytes=4096, compress_downlink=False), model)
    peers = [f"a{i}" for i in range(5)]
    frames: dict[str, list[bytes]] = {}
    for p in peers:
        out = m.handle(MessageReceived(p, encode(Hello(f"{p}:h1", p, "test", None, {}))), 0.0)
        frames[p] = [a.frame for a in out if isinstance(a, Send)]
    obs = list(m.outbound.values())
    assert len(obs) == len(peers)
    assert all(isinstance(ob.frame, Segments) for ob in obs)
    blobs = {id(ob.frame.parts[1]) for ob in obs if isinstance(ob.frame, Segments)}
    assert len(blobs) == 1  # one copy of the model for all five transfers
    # Each agent still gets its own task with the exact model, chunk by chunk.
    for p in peers:
        r = Reassembler(1 << 24)
        whole = None
        ob = m.outbound[next(k for k in m.outbound if k[0] == p)]
        pending = frames[p]  # the first window went out with the task offer
        while whole is None:
            assert pending
            for f in pending:
                _, whole = r.accept("ground", decode_as(f, Chunk), 0.0, lambda: "x:1")
            ob.acked = ob.sent
            pending = ob.next_chunks(lambda: "g:c")
        task = decode(whole)
        assert isinstance(task, Task) and task.task_id == f"r1/{p}" and task.model is not None
        assert np.array_equal(decode_model(task.model, None)["w"], model["w"])
