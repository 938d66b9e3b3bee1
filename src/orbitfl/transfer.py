"""Chunked, resumable transfers of large frames across contact windows.

A frame larger than the chunk size travels as CHUNK messages (offset, total, sha256 of the whole).
The receiver keeps what arrived in order and answers with CHUNK_ACK(next_offset) (every byte before
it is held) the last chunk of each burst (the sender marks it), the last chunk of the frame, and any
chunk it could not take in order. The sender keeps a window of unacknowledged chunks; when the link drops it
keeps its acknowledged offset, and in the next contact starts from there. Any disagreement (the
receiver restarted and forgot, a gap, a chunk of another version of the transfer) is answered with
the receiver's next_offset, so the sender always converges on the receiver's view. The whole frame
is checked against its sha256 before it is decoded.

No sockets, no clocks: the machines call these with the frames they receive and the time they are
given.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orbitfl.wire.errors import Reason, WireError
from orbitfl.wire.messages import Chunk, ChunkAck, encode

DEFAULT_CHUNK_BYTES = 256 << 10
DEFAULT_WINDOW = 8
SPOOL_SUFFIX = ".part"


class Segments:
    """A frame held as consecutive pieces and never joined: the ground sends one encoded model to
    many agents, each inside its own message, so each transfer holds its own small head and tail
    around one shared blob (O(1) memory per agent instead of a copy of the model).

    ``prefix_sha`` (optional) is a sha256 object already fed with the leading pieces that are
    shared across transfers, so the digest of each one hashes only what is its own."""

    def __init__(self, parts: Sequence[bytes], prefix_sha: Any = None, hashed: int = 0) -> None:
        self.parts = list(parts)
        self._starts: list[int] = []
        n = 0
        for p in self.parts:
            self._starts.append(n)
            n += len(p)
        self._len = n
        self._prefix_sha = prefix_sha
        self._hashed = hashed if prefix_sha is not None else 0  # leading pieces in prefix_sha

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, s: slice) -> bytes:
        start, stop, _ = s.indices(self._len)
        out = []
        for p, at in zip(self.parts, self._starts, strict=True):
            if at >= stop:
                break
            if at + len(p) > start:
                out.append(p[max(0, start - at) : stop - at])
        return b"".join(out)

    def sha256(self) -> bytes:
        h = self._prefix_sha.copy() if self._prefix_sha is not None else hashlib.sha256()
        for p in self.parts[self._hashed :]:
            h.update(p)
        return h.digest()

    def join(self) -> bytes:
        return b"".join(self.parts)


@dataclass
class Outbound:
    """Sender side of one transfer. ``acked`` is the receiver's confirmed offset (persist it to
    resume after a restart); ``sent`` is how far chunks have been sent in this contact."""

    transfer: str
    frame: bytes | Segments
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    window: int = DEFAULT_WINDOW
    acked: int = 0
    sent: int = 0
    last_progress: float = 0.0
    sha256: bytes = field(default=b"", repr=False)
    # Resuming, the receiver may hold more than ``acked`` (chunks that did not ask for an ack, or
    # whose ack was lost). So the first send is an empty chunk asking where it stands, and nothing
    # else goes until the answer: one round trip instead of a window of duplicates.
    probe: bool = False
    probing: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0 or self.window <= 0:
            raise ValueError("chunk_bytes and window must be positive")
        if not self.sha256:
            f = self.frame
            self.sha256 = f.sha256() if isinstance(f, Segments) else hashlib.sha256(f).digest()
        self.sent = max(self.sent, self.acked)
        self.probe = self.probe or self.acked > 0

    @property
    def total(self) -> int:
        return len(self.frame)

    @property
    def done(self) -> bool:
        return self.acked >= self.total

    def pause(self) -> None:
        """The link dropped: whatever was sent but not acknowledged is resent next time, after
        asking the receiver how much of it arrived."""
        if self.sent > self.acked or self.probing:
            self.probe = True
        self.probing = False
        self.sent = self.acked

    def next_chunks(
        self, next_id: Callable[[], str], max_bytes: int | None = None, air_bytes: int | None = None
    ) -> list[bytes]:
        """Frames of the chunks the window allows now (and ``max_bytes`` of data, if given). With
        ``air_bytes`` (what the contact can still carry), only chunks that fit whole go: a chunk
        cut by the end of the contact would be lost."""
        air, overhead = air_bytes, 0
        if air is not None:
            # A chunk's bytes on the air beyond its data: the header (with an id of 64 chars, more
            # than the machines' own) and the longest bin length prefix.
            overhead = len(encode(Chunk("x" * 64, self.transfer, self.total, self.total, self.sha256))) + 5
        if self.probing:
            return []  # the probe's answer says where to go on from
        if self.probe and self.acked < self.total:
            if air is not None and air < overhead:
                return []
            self.probe, self.probing = False, True
            return [encode(Chunk(next_id(), self.transfer, self.acked, self.total, self.sha256, b""))]
        pieces: list[tuple[int, int]] = []
        limit = self.acked + self.window * self.chunk_bytes
        budget = max_bytes if max_bytes is not None else self.total
        at = self.sent
        while at < self.total and at < limit:
            end = min(at + self.chunk_bytes, self.total)
            if end - at > budget or (air is not None and end - at + overhead > air):
                break
            budget -= end - at
            if air is not None:
                air -= end - at + overhead
            pieces.append((at, end))
            at = end
        # Only the burst's last chunk asks for a CHUNK_ACK: the sender sends again when an ack
        # comes (or after its retransmit timeout), so that keeps the transfer moving. A transfer
        # longer than the window also asks every half window, so that ack arrives while the rest
        # of the window is in flight and the transfer does not stall once per window.
        half = max(1, self.window // 2) if self.total > limit else len(pieces)
        out = [
            encode(
                Chunk(
                    next_id(),
                    self.transfer,
                    start,
                    self.total,
                    self.sha256,
                    self.frame[start:end],
                    ack=i == len(pieces) - 1 or (i + 1) % half == 0,
                )
            )
            for i, (start, end) in enumerate(pieces)
        ]
        self.sent = at
        return out

    def on_ack(self, ack: ChunkAck, now: float) -> None:
        """Move to the receiver's view. An offset behind ours means it lost data: resend from there."""
        self.probing = False
        off = min(ack.next_offset, self.total)
        if off > self.acked:
            self.last_progress = now
        if off < self.acked or off > self.sent:
            self.sent = off
        self.acked = off
        self.sent = max(self.sent, self.acked)


@dataclass
class Inbound:
    """Receiver side of one transfer: the bytes held so far, in order, in memory or in a spool
    file (``path``) that outlives the process."""

    transfer: str
    total: int
    sha256: bytes
    buf: bytearray = field(default_factory=bytearray, repr=False)
    last_seen: float = 0.0
    path: Path | None = None
    size: int = 0

    def __post_init__(self) -> None:
        if self.path is not None and self.path.exists():
            self.size = min(self.path.stat().st_size, self.total)  # resume after a restart
        else:
            self.size = len(self.buf)

    @property
    def next_offset(self) -> int:
        return self.size

    def append(self, piece: bytes) -> None:
        if self.path is None:
            self.buf += piece
        else:
            # No fsync per chunk: a torn tail after a power cut fails the final checksum, and the
            # transfer is then resent from the start. Correct, merely slower, and rare.
            with open(self.path, "r+b" if self.path.exists() else "wb") as f:
                f.seek(self.size)
                f.write(piece)
                f.truncate()
        self.size += len(piece)

    def read(self) -> bytes:
        if self.path is None:
            return bytes(self.buf)
        # One buffer of exactly the frame's size (read_bytes()[:total] would hold two copies).
        with open(self.path, "rb") as f:
            data = f.read(self.total)
        return data

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Reassembler:
    """All inbound transfers of one side, keyed by (peer, transfer id), with size bounds.

    ``accept`` returns the CHUNK_ACK to send (None: the chunk came in order and did not ask for
    one) and, when a transfer completes and its checksum
    matches, the whole frame. A checksum mismatch raises WireError(CHECKSUM) and forgets the
    transfer, so a resend starts clean.
    """

    def __init__(
        self,
        max_total_bytes: int,
        max_transfers_per_peer: int = 4,
        max_held_bytes: int | None = None,
        spool_dir: Path | None = None,
    ) -> None:
        """``spool_dir``: keep partial transfers in files there instead of memory, so they survive
        a restart of the receiver (the file name is derived from peer, transfer, size and digest,
        so a later chunk of the same transfer finds it)."""
        self.spool_dir = spool_dir
        if spool_dir is not None:
            spool_dir.mkdir(parents=True, exist_ok=True)
        self.max_total_bytes = max_total_bytes
        self.max_per_peer = max_transfers_per_peer
        # Bytes held across all peers: beyond it new chunks are refused (BUSY) until some complete.
        self.max_held_bytes = max_held_bytes if max_held_bytes is not None else 2 * max_total_bytes
        self._held = 0
        self.transfers: dict[tuple[str, str], Inbound] = {}

    def accept(
        self, peer: str, c: Chunk, now: float, next_id: Callable[[], str]
    ) -> tuple[bytes | None, bytes | None]:
        key = (peer, c.transfer)
        if c.total > self.max_total_bytes:
            raise WireError(
                Reason.OVERSIZE,
                f"transfer {c.transfer!r} of {c.total} bytes exceeds the limit of {self.max_total_bytes}",
                c.id,
            )
        t = self.transfers.get(key)
        if t is not None and (t.total != c.total or t.sha256 != c.sha256):
            # Another version of the same transfer id: the sender's view wins, start over.
            self._forget(key)
            t = None
        if t is None:
            if sum(1 for p, _ in self.transfers if p == peer) >= self.max_per_peer:
                self._evict_oldest(peer)
            t = Inbound(c.transfer, c.total, c.sha256, last_seen=now, path=self._spool_path(peer, c))
            self.transfers[key] = t
            self._held += t.size
        t.last_seen = now
        in_order = c.offset <= t.next_offset < c.offset + len(c.data)
        if in_order:
            piece = c.data[t.next_offset - c.offset :]
            if self._held + len(piece) > self.max_held_bytes:
                raise WireError(
                    Reason.BUSY, f"holding {self._held} bytes of unfinished transfers; try later", c.id
                )
            t.append(piece)
            self._held += len(piece)
        if t.next_offset < t.total:
            if in_order and not c.ack:
                return None, None  # the burst's last chunk asks for the ack
            # Asked for, or a duplicate (already held) or a gap (ahead of us): answer where we are.
            return encode(ChunkAck(next_id(), c.transfer, t.next_offset)), None
        ack = encode(ChunkAck(next_id(), c.transfer, t.next_offset))
        frame = t.read()
        self._forget(key)
        if hashlib.sha256(frame).digest() != t.sha256:
            raise WireError(
                Reason.CHECKSUM,
                f"transfer {c.transfer!r}: sha256 of the {t.total} bytes does not "
                "match; it will be resent from the start",
                c.id,
            )
        return ack, frame

    def next_offset(self, peer: str, transfer: str) -> int:
        """Where ``transfer`` from ``peer`` stands (0 if unknown): what to answer after a refusal."""
        t = self.transfers.get((peer, transfer))
        return 0 if t is None else t.next_offset

    def _spool_path(self, peer: str, c: Chunk) -> Path | None:
        if self.spool_dir is None:
            return None
        h = hashlib.sha256(f"{peer}\0{c.transfer}\0{c.total}\0".encode() + c.sha256).hexdigest()
        return self.spool_dir / f"{h[:40]}{SPOOL_SUFFIX}"

    def _forget(self, key: tuple[str, str]) -> None:
        t = self.transfers.pop(key, None)
        if t is not None:
            self._held -= t.size
            t.discard()

    def _evict_oldest(self, peer: str) -> None:
        mine = [(t.last_seen, k) for k, t in self.transfers.items() if k[0] == peer]
        if mine:
            self._forget(min(mine)[1])

    def held_bytes(self) -> int:
        return sum(t.size for t in self.transfers.values())

    def expire(self, now: float, idle_s: float) -> int:
        """Forget (and delete the spool file of) every transfer with no chunk for ``idle_s``:
        an abandoned upload must not hold disk or the held-bytes budget forever. The sender, if it
        comes back, is told offset 0 and starts again. Returns how many were dropped."""
        old = [k for k, t in self.transfers.items() if now - t.last_seen >= idle_s]
        for k in old:
            self._forget(k)
        return len(old)

    def sweep_spool(self, max_age_s: float, *, wall: Callable[[], float] = time.time) -> int:
        """At start: delete spool files not written for ``max_age_s`` (uploads abandoned before a
        restart; younger ones stay, so an agent resumes where it stopped). Returns the count."""
        if self.spool_dir is None:
            return 0
        n = 0
        now = wall()
        for p in self.spool_dir.glob(f"*{SPOOL_SUFFIX}"):
            try:
                if now - os.stat(p).st_mtime >= max_age_s:
                    p.unlink()
                    n += 1
            except FileNotFoundError:
                pass
        return n
