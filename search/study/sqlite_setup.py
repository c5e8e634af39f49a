"""SQLite set up for a few concurrent local workers: WAL (readers do not block the writer), a
busy timeout, and commits without an fsync each."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

__all__ = ["SQLITE_BUSY_TIMEOUT_S", "prepare_sqlite", "sync_normal"]

SQLITE_BUSY_TIMEOUT_S = 60


def prepare_sqlite(path: Path) -> None:
    """Create the folder and switch the database to WAL once (the mode persists in the file):
    readers no longer block the writer, which is what several local workers need."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 11):
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                # Another process switching a new file at the same moment: the switch takes
                # an exclusive lock that SQLite does not wait for.
                if attempt == 10 or "locked" not in str(exc):
                    raise
        time.sleep(0.05 * attempt)


def sync_normal(storage: optuna.storages.RDBStorage) -> None:
    """`synchronous=NORMAL` on every SQLite connection: in WAL mode a commit then appends to
    the log without an fsync (the log is synced at checkpoints). A crashed worker loses
    nothing; a power cut may lose the last commits but never corrupts the file (SQLite's
    documented guarantee for WAL). A `trial.report` costs about a third less."""
    from sqlalchemy import event

    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while Optuna set up the schema lack it
