"""One agent's share of the data as a file, written by the host and read on the board.

A board that trains should not need the libraries that make data sets (scikit-learn for the
digits, mnist1d): the host writes each agent's partition once with :func:`write_partition` and the
agent's config names it (``[data] file = "part.npz"``). The format is a plain ``.npz`` (read with
``allow_pickle=False``) holding exactly two arrays: ``x``, float32 ``[N, ...]`` samples, and ``y``,
int64 ``[N]`` class labels >= 0. Anything else is refused, naming the file and the problem.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

KEYS = ("x", "y")


class PartitionFileError(ValueError):
    """A partition file that cannot be used; the message names the file and the problem."""


def check_partition(
    x: npt.ArrayLike, y: npt.ArrayLike, where: str = "partition"
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``x`` as contiguous float32 and ``y`` as int64, or PartitionFileError saying what is wrong."""
    xa, ya = np.asarray(x), np.asarray(y)
    if xa.ndim < 2 or xa.shape[0] == 0 or 0 in xa.shape:
        raise PartitionFileError(f"{where}: x must be [N, ...] with N >= 1 non-empty samples, got {xa.shape}")
    if not np.issubdtype(xa.dtype, np.floating):
        raise PartitionFileError(f"{where}: x must be floating point, got dtype {xa.dtype}")
    if ya.shape != (xa.shape[0],):
        raise PartitionFileError(f"{where}: y must be [N] = [{xa.shape[0]}] labels, got shape {ya.shape}")
    if not np.issubdtype(ya.dtype, np.integer):
        raise PartitionFileError(f"{where}: y must be integer class labels, got dtype {ya.dtype}")
    if ya.min() < 0:
        raise PartitionFileError(f"{where}: y has a negative label ({int(ya.min())})")
    x32 = np.ascontiguousarray(xa, dtype=np.float32)
    if not np.isfinite(x32).all():
        raise PartitionFileError(
            f"{where}: x has {int(np.size(x32) - np.isfinite(x32).sum())} non-finite values"
        )
    return x32, ya.astype(np.int64)


def write_partition(path: str | Path, x: npt.ArrayLike, y: npt.ArrayLike) -> Path:
    """Write ``x`` and ``y`` to ``path`` (atomically: a reader never sees half a file)."""
    out = Path(path)
    x32, y64 = check_partition(x, y, str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, x=x32, y=y64)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    return out


def read_partition(path: str | Path) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The ``(x, y)`` of a file :func:`write_partition` wrote; PartitionFileError otherwise."""
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            if keys != sorted(KEYS):
                raise PartitionFileError(f"{p}: must hold exactly the arrays x and y, found {keys}")
            x, y = npz["x"], npz["y"]
    except FileNotFoundError:
        raise PartitionFileError(f"{p}: no such file (write it on the host with write_partition)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, PartitionFileError):
            raise
        raise PartitionFileError(f"{p}: not a readable .npz partition file ({exc})") from None
    return check_partition(x, y, str(p))
