"""What one poll of the ground's link hands the daemon is bounded (the rest waits in libzmq's
queues for the next poll), so a burst from many agents never lands in memory at once."""

from __future__ import annotations

import time

import zmq

from orbitfl.runtime.link import GroundLink, Received


def test_one_poll_returns_at_most_its_frame_and_byte_budget_and_loses_nothing() -> None:
    with GroundLink("tcp://127.0.0.1:*", keys=None, insecure=True) as g, zmq.Context() as ctx:
        d = ctx.socket(zmq.DEALER)
        d.linger = 0
        d.routing_id = b"sat-1\x00tag"
        d.connect(g.endpoint)
        frames = [bytes([i]) * 1000 for i in range(1, 21)]
        for f in frames:
            d.send(f)
        got: list[Received] = []
        sizes = []
        end = time.monotonic() + 10
        while len(got) < len(frames) and time.monotonic() < end:
            batch = g.poll(0.2, max_bytes=2500, max_frames=5)
            sizes.append(len(batch))
            got += batch
        d.close()
    assert [r.frame for r in got] == frames  # all of them, in order, none twice
    assert max(sizes) == 3  # the byte budget (2500) stops a poll after the frame that crosses it
    assert all(r.peer == "sat-1" for r in got)
