"""Versions of the SQLite state files (``PRAGMA user_version``): migrate an older one, refuse a newer.

Both daemons keep months of state (the ground's store, an agent's outbox) that must survive an
upgrade of orbitfl. Each file carries its schema version; opening runs the migrations from the file's
version to the code's in one transaction, so a crash mid-upgrade leaves the old file as it was. A file
made by a newer orbitfl is refused: this code cannot know what the newer tables mean.

Version 0 is a file made before versions existed (orbitfl 0.1.0 up to the first versioned release),
whose tables are those of version 1.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from pathlib import Path

from orbitfl.runtime.config import ConfigError


class StateVersionError(ConfigError):
    """A state file this orbitfl cannot use; the message names the file and the fix."""


def _statements(sql: str) -> list[str]:
    # The schemas are plain DDL (no triggers, no string literals holding ';').
    return [s.strip() for s in sql.split(";") if s.strip()]


def schema_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def apply_schema(
    db: sqlite3.Connection, path: Path, version: int, ddl: str, migrations: Mapping[int, str]
) -> int:
    """Bring the database at ``path`` to ``version``; returns the version it had.

    ``ddl`` creates the current tables (``IF NOT EXISTS``) in a new file; ``migrations[n]`` is the
    SQL that turns version ``n - 1`` into ``n`` and runs on older files only. ``db`` must be in
    autocommit mode (``isolation_level=None``)."""
    found = schema_version(db)
    if found > version:
        raise StateVersionError(
            f"{path}: made by a newer orbitfl (schema version {found}, this one reads up to {version}); "
            "upgrade orbitfl, or point state_dir at another folder"
        )
    if found == version:
        # IF NOT EXISTS makes this a no-op on a current file, and still adds a table or index
        # appended to ``ddl`` without a version bump (a new column always needs a migration).
        for stmt in _statements(ddl):
            db.execute(stmt)
        return found
    fresh = db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table'").fetchone()[0] == 0
    db.execute("BEGIN IMMEDIATE")
    try:
        if fresh:
            for stmt in _statements(ddl):
                db.execute(stmt)
        else:
            for n in range(found + 1, version + 1):
                for stmt in _statements(migrations.get(n, "")):
                    db.execute(stmt)
            # Tables a migration need not spell out (new in ``ddl``, absent before) are made here.
            for stmt in _statements(ddl):
                db.execute(stmt)
        db.execute(f"PRAGMA user_version={int(version)}")
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        db.execute("ROLLBACK")
        raise StateVersionError(
            f"{path}: cannot upgrade schema version {found} to {version}: {exc}; the file is unchanged"
        ) from None
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found
