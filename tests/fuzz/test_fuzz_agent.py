"""The ground→agent direction: a real ``orbitfl agent run`` behind a real CurveZMQ link is fed
mutated TASK, MODEL, CHUNK and ACK frames by a stand-in ground. It must not die, must log no
traceback, and must keep the update in its outbox: it resends it (same id) afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import numpy as np
import pytest

from orbitfl.models import zoo
from orbitfl.runtime.keys import new_keypair
from orbitfl.runtime.link import CurveServerKeys, GroundLink
from orbitfl.transfer import Outbound
from orbitfl.wire import Ack, Heartbeat, Hello, Model, Task, Update, decode, encode
from orbitfl.wire.model_codec import encode_model

pytestmark = pytest.mark.integration

FRAMES = 3000


def frames_from(link: GroundLink, timeout_s: float) -> list[Any]:
    out = []
    for r in link.poll(timeout_s):
        try:
            out.append(decode(r.frame))
        except ValueError:
            continue
    return out


def wait_for(
    link: GroundLink, proc: subprocess.Popen[bytes], want: type, log: Path, timeout_s: float = 90
) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for m in frames_from(link, 0.1):
            if isinstance(m, want):
                return m
        assert proc.poll() is None, log.read_text()[-3000:]
    pytest.fail(f"no {want.__name__} from the agent within {timeout_s} s:\n{log.read_text()[-3000:]}")


def test_an_agent_fed_mutated_ground_frames_keeps_its_outbox_and_serves_on(
    fz: ModuleType, tmp_path: Path
) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    new_keypair("ground", keys)
    new_keypair("agent", keys, allow_dir=allowed)
    port = fz.free_port()
    link = GroundLink(
        f"tcp://127.0.0.1:{port}",
        keys=CurveServerKeys(keys / "ground.key_secret", allowed),
        max_msg_size=4 << 20,
        heartbeat_s=0.5,
    )
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        fz._toml(
            {
                "agent": {
                    "name": "agent",
                    "ground": f"tcp://127.0.0.1:{port}",
                    "state_dir": str(tmp_path / "agent"),
                    "secret_key": str(keys / "agent.key_secret"),
                    "ground_key": str(keys / "ground.key"),
                    "retransmit_s": 2.0,
                },
                "data": {"partition": 0, "num_partitions": 4},
                "train": {"max_batches": 2},
                "link": {"heartbeat_s": 0.5, "liveness": 6, "backoff_initial_s": 0.1, "backoff_max_s": 1.0},
            }
        )
    )
    log = tmp_path / "agent.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orbitfl.cli", "agent", "run", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1"),
        )
    try:
        wait_for(link, proc, Hello, log)
        weights = zoo.get_weights(zoo.resolve("mlp", seed=0).model)
        blob = encode_model(0, weights)
        task = Task("ground:task.r1/agent.fromnone", "r1/agent", 1, 0, "fp32", {}, None, blob)
        assert link.send("agent", encode(task))
        update = wait_for(link, proc, Update, log)
        # Recorded valid frames of every kind the ground sends (the ACK is for another update).
        task_frame = encode(task)
        valid = [
            task_frame,
            encode(Model("ground:model.v0.agent.fromnone", blob)),
            encode(Ack("ground:b1.1", "zz:b9.77")),
            encode(Heartbeat("ground:b1.2", 0, 0)),
            *Outbound("ground:task.r2/agent.fromnone", task_frame, chunk_bytes=8192, window=64).next_chunks(
                lambda: "ground:b1.3"
            ),
        ]
        corpus = fz.Corpus(valid, [msgpack.unpackb(f, raw=False) for f in valid], update.id, task)
        rng = np.random.default_rng(5)
        source = fz.frames(corpus, rng)
        for i in range(FRAMES):
            f = next(source)
            if isinstance(f, list) or not f:
                continue  # multipart and empty frames are the link's business (tested on the ground side)
            link.send("agent", f)
            if i % 32 == 0:
                frames_from(link, 0.01)
                assert proc.poll() is None, log.read_text()[-3000:]
        # It still holds the update: it resends it, under the same id.
        end = time.monotonic() + 30
        resent = False
        while time.monotonic() < end and not resent:
            resent = any(isinstance(m, Update) and m.id == update.id for m in frames_from(link, 0.2))
        assert resent, log.read_text()[-3000:]
        assert proc.poll() is None
        text = log.read_text()
        assert "Traceback" not in text, text[text.index("Traceback") - 300 :][:3000]
    finally:
        proc.terminate()
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        link.close()
    assert code == 0, log.read_text()[-3000:]
