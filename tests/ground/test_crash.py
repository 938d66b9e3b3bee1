"""A real ground process killed with SIGKILL while ingesting: every update it ACKed is there once
after restart, and the partial sums rebuilt from disk equal those of the updates it holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from orbitfl.ground.machine import GroundConfig, GroundMachine
from orbitfl.ground.store import GroundStore
from orbitfl.runtime.events import MessageReceived, Send
from orbitfl.wire import Ack, Hello, Update, decode, encode
from orbitfl.wire.payload import encode_payload

SHAPE = (256, 256)

INGEST = textwrap.dedent(
    """
    import sys
    import numpy as np
    from orbitfl.ground.machine import GroundConfig, GroundMachine
    from orbitfl.ground.store import GroundStore
    from orbitfl.runtime.events import MessageReceived, Send
    from orbitfl.wire import Ack, Hello, Update, decode, encode
    from orbitfl.wire.payload import encode_payload

    root, start = sys.argv[1], int(sys.argv[2])
    init = {"w": np.zeros((256, 256), np.float32)}
    g = GroundMachine(GroundStore(root), GroundConfig(min_updates=10**6, checkpoint_every=7), init)
    for i in range(start, start + 10**6):
        agent = f"a{i}"
        g.handle(MessageReceived(agent, encode(Hello(f"{agent}:h", agent, "t", 0, {}))), 0.0)
        t = {"w": np.full((256, 256), float(i % 13), np.float32)}
        f = encode(Update(f"{agent}:1", f"r1/{agent}", 1, 0, 1 + i % 5, {}, encode_payload("fp32", t)))
        for a in g.handle(MessageReceived(agent, f), 0.0):
            if isinstance(a, Send):
                m = decode(a.frame)
                if isinstance(m, Ack):
                    print(m.ref, flush=True)
    """
)


def expected_sum(ids: list[str]) -> tuple[float, float]:
    num = den = 0.0
    for uid in ids:
        i = int(uid.split(":")[0][1:])
        num += float(i % 13) * (1 + i % 5)
        den += 1 + i % 5
    return num, den


def test_ground_sigkilled_while_ingesting_keeps_every_acked_update_once(tmp_path: Path) -> None:
    root = tmp_path / "ground"
    acked: list[str] = []
    start = 0
    for round_ in range(3):  # three kills at different points, same store
        proc = subprocess.Popen(
            [sys.executable, "-c", INGEST, str(root), str(start)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        got = 0
        deadline = time.monotonic() + 60
        while got < 9 + 5 * round_ and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(line.strip())
            got += 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert got > 0
        start += 1000  # fresh agent names for the next run

    init = {"w": np.zeros(SHAPE, np.float32)}
    g = GroundMachine(GroundStore(root), GroundConfig(min_updates=10**6), init)
    for uid in acked:
        assert g.store.is_seen(uid), f"ACKed update {uid} lost"
    n_seen, samples, _ = g.store.round_stats(1)
    assert g.strategy.updates == n_seen >= len(acked)  # possibly one more: persisted, killed before ACK
    seen_ids = [r[0] for r in g.store.db.execute("SELECT update_id FROM seen ORDER BY update_id")]
    num, den = expected_sum(seen_ids)
    assert samples == den
    new = g.strategy.finalize(g.global_model)
    np.testing.assert_allclose(new["w"], num / den, rtol=1e-6)
    # a resend of an ACKed update is recognised, not counted again
    uid = acked[0]
    agent = uid.split(":")[0]
    g.handle(MessageReceived(agent, encode(Hello(f"{agent}:h2", agent, "t", 0, {}))), 1.0)
    i = int(agent[1:])
    f = encode(
        Update(
            uid, f"r1/{agent}", 1, 0, 1 + i % 5, {}, encode_payload("fp32", {"w": np.ones(SHAPE, np.float32)})
        )
    )
    acts = g.handle(MessageReceived(agent, f), 1.0)
    (ack,) = [decode(a.frame) for a in acts if isinstance(a, Send)]
    assert isinstance(ack, Ack) and ack.duplicate
    assert g.strategy.updates == n_seen
