"""Sending an outbox over an intermittent link: oldest first, chunked, resumed, until ACKed.

The discipline both store-and-forward senders share (an agent towards its ground, a ground station
towards the aggregator): the head of the outbox goes out whole when it fits a chunk, else as a
resumable chunked transfer from the offset the receiver last confirmed (kept in the outbox, so a
restart resumes too). An ACK of the head removes it and starts the next; a permanent NACK drops it
(remembered with its reason); a checksum NACK restarts the transfer from zero. Nothing is dropped
because time passed or a link went down.

No sockets, no clock: ``frames`` come back as bytes for the caller's link, and ``now`` is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from orbitfl.runtime.outbox import Outbox, OutboxItem
from orbitfl.transfer import Outbound
from orbitfl.wire.errors import Reason
from orbitfl.wire.messages import ChunkAck

# Upload progress is stored at least this often (and at link down): a crash costs at most this much.
OFFSET_SAVE_BYTES = 1 << 20


class Sizes(Protocol):
    """The sender's config (AgentConfig, GroundConfig): read at each send, so a change applies."""

    chunk_bytes: int
    window: int


class Uploader:
    """The sending half of one outbox. Single-threaded, driven by its machine."""

    def __init__(self, outbox: Outbox, sizes: Sizes, next_id: Callable[[], str]) -> None:
        self.outbox = outbox
        self.sizes = sizes
        self._next_id = next_id
        self.upload: Outbound | None = None  # chunked upload of the outbox head
        self.upload_id: str | None = None  # the head being sent (whole or chunked)
        self.sent_at: float | None = None  # when it was last sent or made progress
        self._saved_offset = 0  # the upload's confirmed offset as last stored in the outbox
        # What the contact can still carry (None: unknown), kept by the caller: ``link_up`` sets
        # it and ``spent`` counts every frame sent, whoever built it.
        self.budget: int | None = None
        self._contact: int | None = None

    def link_up(self, budget: int | None) -> None:
        self.budget = self._contact = budget

    def spent(self, n: int) -> None:
        if self.budget is not None:
            self.budget -= n

    def _chunks(self) -> list[bytes]:
        assert self.upload is not None
        return self.upload.next_chunks(self._next_id, air_bytes=self.budget)

    def start(self, now: float) -> list[bytes]:
        """Frames that send (or resume sending) the outbox head; none when it is empty."""
        head = self.outbox.head()
        if head is None:
            self.upload, self.upload_id, self.sent_at = None, None, None
            return []
        self.sent_at = now
        if len(head.frame) <= self.sizes.chunk_bytes:
            self.upload, self.upload_id = None, head.update_id
            n, left, contact = len(head.frame), self.budget, self._contact
            if left is not None and contact is not None and left < n <= contact:
                # It would be cut by this contact's end, and fits a contact like this one: wait.
                self.sent_at = None
                return []
            return [head.frame]
        self.upload_id = head.update_id
        if self.upload is None or self.upload.transfer != head.update_id:
            self.upload = self._outbound(head)
        else:
            self.upload.pause()
        if self.upload.done:
            # Every byte was confirmed but no ACK came (the receiver may have restarted before
            # ingesting): send the last chunk again; the receiver answers with where it really is.
            self.upload.sent = max(0, self.upload.total - self.sizes.chunk_bytes)
        return self._chunks()

    def pause(self) -> None:
        """The link went down: keep the confirmed offset (durably) and resend the rest later."""
        if self.upload is not None:
            self.upload.pause()
            self.save_offset()
        self.sent_at = None

    def due(self, now: float, retransmit_seconds: float) -> bool:
        """Whether the head has waited ``retransmit_seconds`` for an answer: call ``start`` again."""
        return self.sent_at is not None and now - self.sent_at >= retransmit_seconds

    def on_chunk_ack(self, msg: ChunkAck, now: float, linked: bool) -> list[bytes]:
        if self.upload is None or msg.transfer != self.upload.transfer:
            return []
        self.upload.on_ack(msg, now)
        if self.upload.acked - self._saved_offset >= OFFSET_SAVE_BYTES or self.upload.done:
            self.save_offset()
        self.sent_at = now
        return self._chunks() if linked else []

    def on_ack(self, ref: str, now: float, linked: bool) -> tuple[bool, list[bytes]]:
        """The receiver holds ``ref`` durably: forget it and go on with the next. Returns whether
        it was in the outbox, and the frames that start the next."""
        held = self.outbox.ack(ref)
        if ref != self.upload_id:
            return held, []
        self.upload, self.upload_id, self.sent_at = None, None, None
        return held, self.start(now) if linked else []

    def on_nack(
        self, ref: str | None, reason: str, permanent: frozenset[str], now: float, linked: bool
    ) -> list[bytes]:
        """A refusal of the head: drop it for good (``permanent`` reasons) and go on, or restart a
        transfer whose checksum failed. Other reasons leave it for the next attempt."""
        if ref is None or ref != self.upload_id:
            return []
        if reason in permanent:
            self.outbox.drop(ref, reason, now)
            self.upload, self.upload_id, self.sent_at = None, None, None
            return self.start(now) if linked else []
        if reason == Reason.CHECKSUM.value and self.upload is not None:
            self.upload.acked = self.upload.sent = 0
            self.outbox.set_offset(ref, 0)
            self._saved_offset = 0
            return self.start(now) if linked else []
        return []

    def save_offset(self) -> None:
        if self.upload is not None and self.upload.acked != self._saved_offset:
            self.outbox.set_offset(self.upload.transfer, self.upload.acked)
            self._saved_offset = self.upload.acked

    def _outbound(self, item: OutboxItem) -> Outbound:
        self._saved_offset = item.acked_offset
        s = self.sizes
        return Outbound(item.update_id, item.frame, s.chunk_bytes, s.window, acked=item.acked_offset)
