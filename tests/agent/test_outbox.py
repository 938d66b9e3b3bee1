"""The agent's outbox on real SQLite: holds updates until ACKed, and survives kill -9 mid-write."""

from __future__ import annotations

import hashlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from orbitfl.agent.outbox import Outbox


def test_put_head_ack_drop_and_offsets(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "agent.db")
    ids = [ob.put(f"t{i}", lambda c, i=i: (f"a:{c}", f"frame{i}".encode()), float(i)) for i in range(3)]
    assert ids == ["a:1", "a:2", "a:3"]
    head = ob.head()
    assert head is not None and head.update_id == "a:1" and head.frame == b"frame0"
    ob.set_offset("a:1", 123)
    ob.close()

    ob = Outbox(tmp_path / "agent.db")  # reopened: everything is there
    assert ob.pending() == 3
    head = ob.head()
    assert head is not None and head.acked_offset == 123
    assert ob.ack("a:1") and not ob.ack("a:1")
    assert ob.drop("a:2", "stale", 5.0)
    assert ob.has_task("t1")  # a dropped task is not redone
    assert [i.update_id for i in ob.items()] == ["a:3"]
    # the counter never goes back, even after rows are gone
    assert ob.put("t9", lambda c: (f"a:{c}", b"x"), 6.0) == "a:4"
    ob.close()


def test_model_is_kept(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "agent.db")
    assert ob.load_model() is None
    w = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    ob.save_model(4, w)
    ob.close()
    held = Outbox(tmp_path / "agent.db").load_model()
    assert held is not None and held[0] == 4 and np.array_equal(held[1]["w"], w["w"])


WRITER = textwrap.dedent(
    """
    import hashlib, sys
    from orbitfl.agent.outbox import Outbox

    def frame(c):
        # big enough rows (up to ~1 MB) that a kill often lands inside a write
        n = 20_000 + (c * 7919) % 1_000_000
        seed = hashlib.sha256(str(c).encode()).digest()
        return (seed * (n // 32 + 1))[:n]

    ob = Outbox(sys.argv[1])
    i = 0
    while True:
        i += 1
        uid = ob.put(f"t{i}", lambda c: (f"a:{c}", frame(c)), float(i))
        print(uid, flush=True)
        c = int(uid.split(":")[1])
        if c % 3 == 0:
            ob.ack(f"a:{c - 2}")  # deletes interleave with inserts, as in real use
    """
)


# The writer's interpreter: this one, or under emulated aarch64 the emulated one (a guest cannot
# exec another aarch64 binary by itself: tools/cross/aarch64.py says how, qemu and all).
CHILD_PYTHON = shlex.split(os.environ.get("ORBITFL_CHILD_PYTHON", "")) or [sys.executable]


def expected_frame(c: int) -> bytes:
    n = 20_000 + (c * 7919) % 1_000_000
    seed = hashlib.sha256(str(c).encode()).digest()
    return (seed * (n // 32 + 1))[:n]


def test_outbox_intact_after_sigkill_mid_write(tmp_path: Path) -> None:
    db = tmp_path / "agent.db"
    for attempt in range(3):  # kill at three different moments, reopening the same file each time
        proc = subprocess.Popen([*CHILD_PYTHON, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        committed: list[str] = []
        deadline = time.monotonic() + 60
        while len(committed) < 15 + 7 * attempt and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            committed.append(line.strip())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        assert committed, "the writer committed nothing"

        ob = Outbox(db)
        rows = {it.update_id: it for it in ob.items()}
        acked = {f"a:{int(u.split(':')[1]) - 2}" for u in committed if int(u.split(":")[1]) % 3 == 0}
        for uid in committed:
            if uid in acked:
                continue
            assert uid in rows, f"committed row {uid} lost after kill -9"
        for uid, it in rows.items():
            c = int(uid.split(":")[1])
            assert it.frame == expected_frame(c), f"row {uid} torn"
        ob.close()
