"""Chunked transfers: cut by the end of a contact, resumed in the next from where they stopped."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from orbitfl.transfer import Outbound, Reassembler
from orbitfl.wire import Chunk, ChunkAck, Reason, WireError, decode, decode_as

ids = (f"x:{i}" for i in itertools.count())


def next_id() -> str:
    return next(ids)


def test_transfer_cut_between_contacts_resumes_where_it_stopped() -> None:
    frame = os.urandom(10_000)
    ob = Outbound("a:1", frame, chunk_bytes=1000, window=3)
    rx = Reassembler(max_total_bytes=1 << 20)
    sent_bytes = 0
    # Contact 1: three chunks go out, only two arrive before the link drops.
    chunks = ob.next_chunks(next_id)
    assert len(chunks) == 3
    for f in chunks[:2]:
        ack, whole = rx.accept("a", decode_as(f, Chunk), 0.0, next_id)
        sent_bytes += len(decode_as(f, Chunk).data)
        ob.on_ack(decode_as(ack, ChunkAck), 0.0)
        assert whole is None
    ob.pause()
    assert ob.acked == 2000 and ob.sent == 2000
    # Contact 2: the sender starts from the confirmed offset, never from zero.
    done = None
    while done is None:
        out = ob.next_chunks(next_id)
        assert out, "sender stalled"
        for f in out:
            c = decode_as(f, Chunk)
            assert c.offset >= 2000
            sent_bytes += len(c.data)
            ack, whole = rx.accept("a", c, 1.0, next_id)
            if ack is not None:
                ob.on_ack(decode_as(ack, ChunkAck), 1.0)
            if whole is not None:
                done = whole
    assert done == frame
    assert ob.done
    assert sent_bytes == len(frame)  # nothing sent twice
    assert rx.held_bytes() == 0


def test_receiver_that_forgot_makes_the_sender_restart_from_its_offset() -> None:
    frame = os.urandom(5000)
    ob = Outbound("a:2", frame, chunk_bytes=1000, window=2, acked=3000)  # sender believes 3000
    rx = Reassembler(max_total_bytes=1 << 20)  # a restarted receiver holds nothing
    first = decode_as(ob.next_chunks(next_id)[0], Chunk)
    assert first.offset == 3000
    ack, whole = rx.accept("a", first, 0.0, next_id)
    assert whole is None
    back = decode_as(ack, ChunkAck)
    assert back.next_offset == 0
    ob.on_ack(back, 0.0)
    assert ob.acked == 0 and ob.sent == 0
    result = None
    while result is None:
        for f in ob.next_chunks(next_id):
            ack, w = rx.accept("a", decode_as(f, Chunk), 0.0, next_id)
            ob.on_ack(decode_as(ack, ChunkAck), 0.0)
            result = w or result
    assert result == frame


def test_duplicate_and_overlapping_chunks_are_harmless() -> None:
    frame = os.urandom(3000)
    ob = Outbound("a:3", frame, chunk_bytes=1000, window=3)
    chunks = [decode_as(f, Chunk) for f in ob.next_chunks(next_id)]
    rx = Reassembler(max_total_bytes=1 << 20)
    rx.accept("a", chunks[0], 0.0, next_id)
    ack, _ = rx.accept("a", chunks[0], 0.0, next_id)  # duplicate
    assert decode_as(ack, ChunkAck).next_offset == 1000
    ack, _ = rx.accept("a", chunks[2], 0.0, next_id)  # gap: not stored
    assert decode_as(ack, ChunkAck).next_offset == 1000
    _, w = rx.accept("a", chunks[1], 0.0, next_id)
    assert w is None
    _, w = rx.accept("a", chunks[2], 0.0, next_id)
    assert w == frame


def test_checksum_mismatch_is_refused_and_forgotten() -> None:
    frame = os.urandom(2000)
    ob = Outbound("a:4", frame, chunk_bytes=1000, window=2)
    chunks = [decode_as(f, Chunk) for f in ob.next_chunks(next_id)]
    rx = Reassembler(max_total_bytes=1 << 20)
    rx.accept("a", chunks[0], 0.0, next_id)
    bad = Chunk(chunks[1].id, chunks[1].transfer, 1000, 2000, chunks[1].sha256, b"\x00" * 1000)
    with pytest.raises(WireError) as ei:
        rx.accept("a", bad, 0.0, next_id)
    assert ei.value.reason is Reason.CHECKSUM
    assert rx.transfers == {}
    # the clean resend from the start then succeeds
    for c in chunks:
        _, w = rx.accept("a", c, 0.0, next_id)
    assert w == frame


def test_oversize_transfer_is_refused_up_front() -> None:
    ob = Outbound("a:5", os.urandom(5000), chunk_bytes=1000)
    rx = Reassembler(max_total_bytes=4000)
    with pytest.raises(WireError) as ei:
        rx.accept("a", decode_as(ob.next_chunks(next_id)[0], Chunk), 0.0, next_id)
    assert ei.value.reason is Reason.OVERSIZE


def test_transfers_of_different_peers_are_separate_and_bounded() -> None:
    rx = Reassembler(max_total_bytes=1 << 20, max_transfers_per_peer=2)
    for i in range(5):
        ob = Outbound(f"a:{i}", os.urandom(3000), chunk_bytes=1000, window=1)
        rx.accept("a", decode_as(ob.next_chunks(next_id)[0], Chunk), float(i), next_id)
    ob = Outbound("b:1", os.urandom(3000), chunk_bytes=1000, window=1)
    rx.accept("b", decode_as(ob.next_chunks(next_id)[0], Chunk), 0.0, next_id)
    assert sum(1 for p, _ in rx.transfers if p == "a") == 2
    assert ("b", "b:1") in rx.transfers


def test_outbound_validates_its_arguments() -> None:
    with pytest.raises(ValueError):
        Outbound("a:1", b"x", chunk_bytes=0)
    assert decode(Outbound("a:1", b"xyz", chunk_bytes=2).next_chunks(next_id)[0]).TYPE == "CHUNK"


def test_receiver_bounds_the_bytes_it_holds_across_transfers() -> None:
    rx = Reassembler(max_total_bytes=10_000, max_held_bytes=2500)
    a = Outbound("a:1", os.urandom(5000), chunk_bytes=1000, window=2)
    b = Outbound("b:1", os.urandom(5000), chunk_bytes=1000, window=1)
    for f in a.next_chunks(next_id):
        rx.accept("a", decode_as(f, Chunk), 0.0, next_id)
    assert rx.held_bytes() == 2000
    with pytest.raises(WireError) as ei:
        rx.accept("b", decode_as(b.next_chunks(next_id)[0], Chunk), 0.0, next_id)
    assert ei.value.reason is Reason.BUSY
    assert rx.next_offset("a", "a:1") == 2000 and rx.next_offset("b", "b:1") == 0


@pytest.mark.parametrize("seed", range(150))
def test_lossy_reordering_link_with_contact_cuts_always_delivers_the_exact_frame(seed: int) -> None:
    """Random sizes, chunk sizes, windows and loss rates (seeded, so a failure replays)."""
    import random

    rnd = random.Random(seed)
    size, chunk, window, loss = (
        rnd.randint(1, 9000),
        rnd.randint(100, 2000),
        rnd.randint(1, 5),
        rnd.uniform(0, 0.6),
    )
    frame = rnd.randbytes(size)
    ob = Outbound("a:1", frame, chunk_bytes=chunk, window=window)
    rx = Reassembler(max_total_bytes=1 << 20)
    got = None
    for step in range(2000):
        if got is not None:
            break
        if step % 7 == 6:  # end of a contact: in-flight frames are gone, the sender pauses
            ob.pause()
        wire = ob.next_chunks(next_id)
        if not wire:  # everything in flight was lost: the retransmit timer fires
            ob.pause()
            wire = ob.next_chunks(next_id)
        rnd.shuffle(wire)
        wire += [w for w in wire if rnd.random() < 0.2]  # duplicates
        for f in wire:
            if rnd.random() < loss:
                continue
            ack, whole = rx.accept("a", decode_as(f, Chunk), float(step), next_id)
            if ack is not None and rnd.random() >= loss:
                ob.on_ack(decode_as(ack, ChunkAck), float(step))
            got = whole or got
    assert got == frame


def test_spooled_transfer_survives_a_new_reassembler(tmp_path: Path) -> None:
    frame = os.urandom(7000)
    ob = Outbound("a:7", frame, chunk_bytes=1000, window=3)
    rx = Reassembler(max_total_bytes=1 << 20, spool_dir=tmp_path)
    for f in ob.next_chunks(next_id):
        ack, _ = rx.accept("a", decode_as(f, Chunk), 0.0, next_id)
        ob.on_ack(decode_as(ack, ChunkAck), 0.0)
    assert ob.acked == 3000
    rx2 = Reassembler(max_total_bytes=1 << 20, spool_dir=tmp_path)  # the receiver restarted
    ob.pause()
    got = None
    while got is None:
        for f in ob.next_chunks(next_id):
            c = decode_as(f, Chunk)
            assert c.offset >= 3000  # nothing before the spooled offset is sent again
            ack, w = rx2.accept("a", c, 1.0, next_id)
            ob.on_ack(decode_as(ack, ChunkAck), 1.0)
            got = w or got
    assert got == frame
    assert list(tmp_path.iterdir()) == []


def test_only_the_burst_end_and_each_half_window_of_a_long_transfer_ask_for_an_ack() -> None:
    frame = os.urandom(20_500)
    ob = Outbound("a:9", frame, chunk_bytes=1000, window=8)
    rx = Reassembler(max_total_bytes=1 << 20)
    asked: list[bool] = []
    acks = 0
    got = None
    while got is None:
        burst = [decode_as(f, Chunk) for f in ob.next_chunks(next_id)]
        assert burst, "sender stalled"
        for c in burst:
            asked.append(c.ack)
            ack, whole = rx.accept("a", c, 0.0, next_id)
            assert (ack is not None) == (c.ack or whole is not None)
            if ack is not None:
                acks += 1
                ob.on_ack(decode_as(ack, ChunkAck), 0.0)
            got = whole or got
    assert got == frame and ob.done
    assert len(asked) == 21 and acks <= 21 // 4 + 2
    assert asked[3] and asked[7] and not any(asked[:3]) and asked[-1]
    # A transfer that fits in the window is acked once, at its end.
    short = Outbound("a:14", os.urandom(6000), chunk_bytes=1000, window=8)
    assert [decode_as(f, Chunk).ack for f in short.next_chunks(next_id)] == [False] * 5 + [True]
    # A chunk from an older sender (no "ack" key: asks for one) is answered every time.
    old = Outbound("a:10", frame, chunk_bytes=1000, window=8)
    for f in old.next_chunks(next_id)[:3]:
        c = decode_as(f, Chunk)
        c = Chunk(c.id, c.transfer, c.offset, c.total, c.sha256, c.data)
        ack, _ = rx.accept("b", c, 0.0, next_id)
        assert ack is not None and decode_as(ack, ChunkAck).next_offset == c.offset + len(c.data)


def test_a_chunk_that_does_not_ask_is_still_answered_when_it_is_out_of_order() -> None:
    frame = os.urandom(6000)
    ob = Outbound("a:11", frame, chunk_bytes=1000, window=8)
    chunks = [decode_as(f, Chunk) for f in ob.next_chunks(next_id)]
    assert not chunks[1].ack and not chunks[2].ack
    rx = Reassembler(max_total_bytes=1 << 20)
    assert rx.accept("a", chunks[0], 0.0, next_id)[0] is None
    ack, _ = rx.accept("a", chunks[2], 0.0, next_id)  # a gap: where to resend from
    assert ack is not None and decode_as(ack, ChunkAck).next_offset == 1000
    assert rx.accept("a", chunks[1], 0.0, next_id)[0] is None
    ack, _ = rx.accept("a", chunks[1], 0.0, next_id)  # a duplicate
    assert ack is not None and decode_as(ack, ChunkAck).next_offset == 2000


def test_a_resumed_transfer_asks_first_and_resends_nothing_the_receiver_holds() -> None:
    frame = os.urandom(10_000)
    ob = Outbound("a:12", frame, chunk_bytes=1000, window=8)
    rx = Reassembler(max_total_bytes=1 << 20)
    burst = [decode_as(f, Chunk) for f in ob.next_chunks(next_id)]
    for c in burst[:3]:  # three arrive, none of them asked for an ack, then the contact ends
        assert rx.accept("a", c, 0.0, next_id) == (None, None)
    ob.pause()
    assert ob.acked == 0
    (probe,) = [decode_as(f, Chunk) for f in ob.next_chunks(next_id)]
    assert probe.data == b"" and probe.ack and probe.offset == 0
    assert ob.next_chunks(next_id) == []  # nothing more until the answer
    ack, _ = rx.accept("a", probe, 1.0, next_id)
    assert ack is not None
    ob.on_ack(decode_as(ack, ChunkAck), 1.0)
    sent, got = 0, None
    while got is None:
        for f in ob.next_chunks(next_id):
            c = decode_as(f, Chunk)
            sent += len(c.data)
            ack, got = rx.accept("a", c, 1.0, next_id)
            if ack is not None:
                ob.on_ack(decode_as(ack, ChunkAck), 1.0)
    assert got == frame and sent == 7000
    # A lost probe is asked again after the retransmit timeout (the machines call pause then).
    ob2 = Outbound("a:13", frame, chunk_bytes=1000, window=8, acked=4000)
    (p1,) = ob2.next_chunks(next_id)
    ob2.pause()
    (p2,) = ob2.next_chunks(next_id)
    assert decode_as(p1, Chunk).data == decode_as(p2, Chunk).data == b""


def test_with_an_air_budget_only_chunks_that_fit_whole_are_sent() -> None:
    frame = os.urandom(10_000)
    ob = Outbound("a:15", frame, chunk_bytes=1000, window=8)
    out = ob.next_chunks(next_id, air_bytes=3500)
    assert 1 <= len(out) <= 3 and sum(len(f) for f in out) <= 3500
    assert decode_as(out[-1], Chunk).ack  # the burst's end asks, as always
    assert ob.next_chunks(next_id, air_bytes=50) == []  # not even the header fits
    assert ob.sent == 1000 * len(out)
