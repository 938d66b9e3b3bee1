"""Settings shared by every suite.

Hypothesis keeps its example database and constants cache in a temporary directory (tests never
write into the checkout), and has no per-example deadline: CI runs on two shared cores where a
slow example says nothing about the code.

An sqlite3 connection left open for the garbage collector fails the suite on every interpreter:
CPython 3.13 warns of one itself, and on 3.10-3.12 connections made in-process warn the same way.

Collection: the long files first (for two xdist workers); under ORBITFL_EMULATED_BOARD (the
emulated aarch64 suite) no NumPy-backend case and no host_only test; ORBITFL_SHARD=i/n keeps
every n-th test from the i-th.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import warnings
from typing import Any

import pytest

os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="orbitfl-hypothesis-"))

from hypothesis import settings  # imported after the storage directory is set

settings.register_profile("orbitfl", database=None, deadline=None)
settings.load_profile("orbitfl")


class _ClosedOrWarned(sqlite3.Connection):
    """A connection that warns if it is collected while still open, as CPython 3.13's own do."""

    _closed = False

    def close(self) -> None:
        self._closed = True
        super().close()

    def __del__(self) -> None:
        if not self._closed:
            warnings.warn(f"unclosed database in {self!r}", ResourceWarning, stacklevel=1)


def _connect_tracked(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    kwargs.setdefault("factory", _ClosedOrWarned)
    conn: sqlite3.Connection = _real_connect(*args, **kwargs)
    return conn


# 3.10-3.12 drop an open connection silently; the suite fails on one everywhere, not only on 3.13
# (where a leak surfaced as an error in whatever test the garbage collector happened to run in).
_real_connect = sqlite3.connect
if sys.version_info < (3, 13):
    sqlite3.connect = _connect_tracked  # type: ignore[assignment]


# The longest files first: under `-n 2 --dist loadfile` (tools/dev.py test) a long file that starts
# last runs alone at the end while the other worker idles; started first, the short ones fill in.
_LONG_FIRST = ("tests/cross/", "tests/integration/", "tests/fuzz/", "tests/apps/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        rel = (
            item.path.relative_to(config.rootpath).as_posix()
            if item.path.is_relative_to(config.rootpath)
            else ""
        )
        return next((i for i, p in enumerate(_LONG_FIRST) if rel.startswith(p)), len(_LONG_FIRST))

    items.sort(key=rank)  # stable: each file keeps its own order
    keep = [item for item in items if not (_EMULATED_BOARD and _left_off_the_board(item))]
    shard = _shard()
    if shard is not None:
        index, count = shard
        keep = [item for i, item in enumerate(keep) if i % count == index]
    if len(keep) < len(items):
        kept = set(map(id, keep))
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
        items[:] = keep


# Set by tools/cross/aarch64.py's emulated suite: the board runs the C++ core, never the NumPy
# reference, whose aarch64 outputs tests/cross compares with x86-64's by digest; its own cases
# (already run on the host) would double the emulated time. Cases comparing the backends stay.
_EMULATED_BOARD = bool(os.environ.get("ORBITFL_EMULATED_BOARD"))


def _left_off_the_board(item: pytest.Item) -> bool:
    """A NumPy-backend case, or a test marked host_only (a CLI's argument checks, where each start
    costs seconds under qemu; twins too slow there whose kernels the digests cover)."""
    if item.get_closest_marker("host_only") is not None:
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(isinstance(v, str) and v == "numpy" for v in callspec.params.values())


def _shard() -> tuple[int, int] | None:
    """ORBITFL_SHARD=i/n: keep every n-th collected test from the i-th (for concurrent runs)."""
    text = os.environ.get("ORBITFL_SHARD")
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"ORBITFL_SHARD must be i/n with 0 <= i < n, got {text!r}") from None
    if not 0 <= index < count:
        raise pytest.UsageError(f"ORBITFL_SHARD must be i/n with 0 <= i < n, got {text!r}")
    return index, count
