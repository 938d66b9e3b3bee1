"""What the agent needs from an on-device trainer, independent of the runtime that trains.

ONNX Runtime on-device training (:mod:`orbitfl.agent.ort_trainer`) is the first backend; a board
without an onnxruntime-training build (aarch64 today) needs another backend implementing this
interface (docs/training.md). Weights are always ``dict[str, numpy.float32 array]`` keyed by the
model's stable parameter names, so codecs, strategies and the TFLite exporter never see a runtime.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrainMetrics:
    loss: float  # mean training loss over the samples seen in this call
    accuracy: float | None  # training accuracy (classification), None for regression
    samples: int  # samples trained on in this call (after a resume: only the remaining ones)
    batches: int
    epochs: float  # epochs completed in this call (fractional if stopped by max_batches)
    seconds: float
    resumed_from: tuple[int, int] | None = None  # (epoch, batch) of the checkpoint resumed, if any
    history: list[dict[str, float]] = field(default_factory=list)  # one row per finished epoch


@dataclass(frozen=True)
class EvalMetrics:
    loss: float
    accuracy: float | None
    samples: int


class Trainer(abc.ABC):
    """A model being trained on the board.

    ``train`` with a ``checkpoint_dir`` writes an atomic, checksummed checkpoint every
    ``checkpoint_every`` batches and at the end of each epoch; a new trainer given the same
    directory resumes from the last one (same weights, optimizer state and position in the epoch),
    so a process killed mid-epoch loses at most ``checkpoint_every`` batches of work.
    """

    @property
    @abc.abstractmethod
    def parameter_names(self) -> list[str]:
        """Every parameter, trainable or frozen, in graph order."""

    @property
    @abc.abstractmethod
    def trainable_names(self) -> list[str]:
        """The parameters the optimizer updates."""

    @property
    @abc.abstractmethod
    def parameter_shapes(self) -> dict[str, tuple[int, ...]]: ...

    @abc.abstractmethod
    def get_weights(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Copies of the current parameters (all, or the named ones)."""

    @abc.abstractmethod
    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the named parameters. Unknown name or wrong shape -> ValueError; dtype other than
        float32 or not an array -> TypeError; each error names the parameter. Nothing is changed
        unless every entry is valid."""

    @abc.abstractmethod
    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        learning_rate: float | None = None,
        max_batches: int | None = None,
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int = 0,
        on_batch: Callable[[int, int], bool | None] | None = None,
    ) -> TrainMetrics:
        """Train on ``x`` (samples first; flattened or shaped) and ``y`` (int labels or float
        targets). Shuffling is seeded by (seed, epoch) so a resumed run sees the same order.

        ``on_batch(epoch, batches_done_in_epoch)`` runs after every batch; returning True stops
        training there (a checkpoint is written first), e.g. when a contact window opens.
        A checkpoint in ``checkpoint_dir`` is resumed only if it belongs to the same run: same
        starting weights, data, epochs, batch size, learning rate and seed."""

    @abc.abstractmethod
    def evaluate(self, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256) -> EvalMetrics: ...

    @abc.abstractmethod
    def predict(self, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Model outputs (logits or regression values), float32 ``[N, outputs]``."""

    @abc.abstractmethod
    def second_moments(self) -> dict[str, np.ndarray]:
        """Per trainable parameter, the optimizer's estimate of the squared gradient (Adam's ``v``),
        the curvature LAQ weights its quantization by. Zeros before the first step."""

    @abc.abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write weights, optimizer state and progress to one checkpoint file, atomically."""

    @abc.abstractmethod
    def restore(self, path: str | Path) -> None:
        """Load a checkpoint written by :meth:`save`; a corrupted or foreign file raises
        :class:`CheckpointError` and leaves the trainer unchanged."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted (checksum mismatch) or for another model."""


# --- the checkpoint container -------------------------------------------------------------------
# One file: MAGIC | u32 meta length | u64 blob length | sha256(meta + blob) | meta (JSON) | blob.
# The blob is the backend's own state (for ORT: its checkpoint with the optimizer state). Written to
# a temporary file in the same folder, fsynced, renamed over the old one and the folder fsynced, so
# after a crash the path holds either the old or the new checkpoint, complete. The checksum catches
# what rename cannot: bit rot, a truncated copy, a file edited by hand.

CHECKPOINT_MAGIC = b"OFLCKPT\x01"
_HEADER = struct.Struct("<8sIQ32s")


def write_checkpoint_file(path: str | Path, meta: Mapping[str, Any], blob: bytes) -> Path:
    p = Path(path)
    meta_bytes = json.dumps(meta, sort_keys=True).encode()
    digest = hashlib.sha256(meta_bytes + blob).digest()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(CHECKPOINT_MAGIC, len(meta_bytes), len(blob), digest))
            f.write(meta_bytes)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return p


def read_checkpoint_file(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """The (meta, blob) of a checkpoint; CheckpointError if it is missing, truncated or corrupted."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {p}: {exc.strerror or exc}") from None
    if len(raw) < _HEADER.size or raw[:8] != CHECKPOINT_MAGIC:
        raise CheckpointError(f"{p} is not an orbitfl checkpoint (bad header)")
    _, meta_len, blob_len, digest = _HEADER.unpack_from(raw)
    body = raw[_HEADER.size :]
    if len(body) != meta_len + blob_len:
        raise CheckpointError(
            f"checkpoint {p} is truncated or padded: header says {meta_len + blob_len} "
            f"bytes, file holds {len(body)}; refusing to use it"
        )
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"checkpoint {p} is corrupted (checksum mismatch); refusing to use it")
    try:
        meta = json.loads(body[:meta_len])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # only a writer bug can get here
        raise CheckpointError(f"checkpoint {p}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {p}: metadata is not a map")
    return meta, body[meta_len:]


def clean_stale_temp_files(folder: str | Path, name: str) -> None:
    """Remove temporary files a killed writer left next to checkpoint ``name``."""
    for leftover in Path(folder).glob(f".{name}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
