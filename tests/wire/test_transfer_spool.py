"""Transfers that hold little: a frame made of shared pieces, and spool files that do not outlive
their transfer."""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from pathlib import Path

from orbitfl.transfer import Outbound, Reassembler, Segments
from orbitfl.wire import Chunk, ChunkAck, decode_as

ids = (f"x:{i}" for i in itertools.count())


def next_id() -> str:
    return next(ids)


def test_segments_slice_and_digest_like_the_joined_frame() -> None:
    parts = [os.urandom(n) for n in (7, 5000, 0, 1234)]
    joined = b"".join(parts)
    pre = hashlib.sha256(parts[0])
    pre.update(parts[1])
    for seg in (Segments(parts), Segments(parts, pre, hashed=2)):
        assert len(seg) == len(joined)
        assert seg.sha256() == hashlib.sha256(joined).digest()
        for a, b in [(0, 7), (3, 4000), (6990, 6250), (5007, 6241), (0, 10**9), (6000, 6241)]:
            assert seg[a:b] == joined[a:b]


def test_outbound_over_segments_sends_the_same_chunks_as_over_bytes() -> None:
    parts = [b"head", os.urandom(9000), b"tail"]
    a = Outbound("g:1", Segments(parts), chunk_bytes=1000, window=20)
    b = Outbound("g:1", b"".join(parts), chunk_bytes=1000, window=20)
    assert a.sha256 == b.sha256
    ca = [decode_as(f, Chunk) for f in a.next_chunks(next_id)]
    cb = [decode_as(f, Chunk) for f in b.next_chunks(next_id)]
    assert [(c.offset, c.data) for c in ca] == [(c.offset, c.data) for c in cb]
    r = Reassembler(1 << 20)
    whole = None
    for c in ca:
        _, whole = r.accept("p", c, 0.0, next_id)
    assert whole == b"".join(parts)


def _start(r: Reassembler, peer: str, frame: bytes, now: float) -> None:
    ob = Outbound(f"{peer}:1", frame, chunk_bytes=1000, window=2)
    for f in ob.next_chunks(next_id):
        ack, whole = r.accept(peer, decode_as(f, Chunk), now, next_id)
        assert whole is None
        ob.on_ack(decode_as(ack, ChunkAck), now)


def test_an_abandoned_upload_is_dropped_with_its_spool_file(tmp_path: Path) -> None:
    r = Reassembler(1 << 20, spool_dir=tmp_path)
    _start(r, "quiet", os.urandom(5000), now=0.0)
    _start(r, "busy", os.urandom(5000), now=90.0)
    assert len(list(tmp_path.glob("*.part"))) == 2
    assert r.expire(100.0, idle_s=50.0) == 1
    assert len(list(tmp_path.glob("*.part"))) == 1
    assert r.next_offset("quiet", "quiet:1") == 0 and r.next_offset("busy", "busy:1") == 2000
    assert r.held_bytes() == 2000


def test_at_start_old_spool_files_are_swept_and_recent_ones_resume(tmp_path: Path) -> None:
    frame = os.urandom(5000)
    _start(Reassembler(1 << 20, spool_dir=tmp_path), "gone", os.urandom(5000), now=0.0)
    (gone,) = tmp_path.glob("*.part")
    now = time.time()
    os.utime(gone, (now - 7200, now - 7200))  # abandoned two hours ago
    _start(Reassembler(1 << 20, spool_dir=tmp_path), "recent", frame, now=0.0)
    (recent,) = set(tmp_path.glob("*.part")) - {gone}
    r = Reassembler(1 << 20, spool_dir=tmp_path)  # the ground restarts
    assert r.sweep_spool(3600.0) == 1
    assert list(tmp_path.glob("*.part")) == [recent]
    # The recent one resumes where it stopped: the receiver answers its next chunk with 2000.
    ob = Outbound("recent:1", frame, chunk_bytes=1000, window=1, acked=0)
    ack, _ = r.accept("recent", decode_as(ob.next_chunks(next_id)[0], Chunk), 1.0, next_id)
    assert decode_as(ack, ChunkAck).next_offset == 2000
