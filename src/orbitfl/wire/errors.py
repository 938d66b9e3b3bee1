"""Why a frame was refused: one code per reason, shared by NACKs, logs and metrics."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Refusal reason codes. They travel in NACK.reason and label the refusal counters, so they are
    part of the protocol: add new ones, never rename."""

    MALFORMED = "malformed"  # not msgpack, or not a map at the top
    OVERSIZE = "oversize"  # frame or field beyond the configured limits
    BAD_VERSION = "bad_version"  # protocol version this side does not speak
    UNKNOWN_TYPE = "unknown_type"
    SCHEMA = "schema"  # missing field, wrong field type, bad value
    BAD_ID = "bad_id"  # message id not of the form "<sender>:<counter>" for this sender
    NOT_REGISTERED = "not_registered"  # update before HELLO
    UNKNOWN_TENSOR = "unknown_tensor"
    MISSING_TENSOR = "missing_tensor"
    BAD_DTYPE = "bad_dtype"
    BAD_SHAPE = "bad_shape"
    NON_FINITE = "non_finite"
    BAD_PAYLOAD = "bad_payload"  # encoded tensors the codec refuses
    CHECKSUM = "checksum"  # reassembled transfer does not match its checksum
    STALE = "stale"  # update built on a model version the ground no longer accepts
    DUPLICATE = "duplicate"  # counted, not NACKed: a repeated update id is ACKed again, counted once
    UNKNOWN_TASK = "unknown_task"
    BUSY = "busy"  # too many transfers in flight from this peer
    MODEL_MISMATCH = "model_mismatch"  # HELLO/TASK name another model (model_fingerprint)
    NORM_BOUND = "norm_bound"  # an update's delta is larger than the ground's poisoning guard admits
    NOT_ALLOWED = "not_allowed"  # a station: the agent is not in the federation's allow-list
    UNSYNCED = "unsynced"  # a station that has no model from the aggregator yet; try later
    INTERNAL = "internal"  # the receiver failed while handling the frame; the sender keeps it and retries


class WireError(ValueError):
    """A frame or field that breaks the wire contract. ``reason`` is the NACK code; ``ref`` is the
    offending message id when it could be read, so the NACK can name what it refuses."""

    def __init__(self, reason: Reason, text: str, ref: str | None = None) -> None:
        super().__init__(f"{reason.value}: {text}")
        self.reason = reason
        self.text = text
        self.ref = ref
