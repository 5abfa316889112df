"""The registry's file: one SQLite connection (WAL mode) behind one lock, migrated on open.

One connection guarded by a lock: the hub's writes are tiny (a heartbeat is one UPDATE), so a
lock costs less than a pool and keeps redeeming a token atomic. Schema changes bump
``PRAGMA user_version`` and add a step to schema.MIGRATIONS.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgebox.fleet.hub.store.schema import MIGRATIONS, migrate


class RegistryDatabase:
    """The connection, its lock and the schema; every part of the registry builds on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The write-ahead log is checkpointed every 256 pages (1 MiB) and cut back to 1 MiB
        # after, instead of SQLite's 1000 pages left at their largest size.
        self._db.execute("PRAGMA wal_autocheckpoint=256")
        self._db.execute(f"PRAGMA journal_size_limit={1 << 20}")
        with self._lock:
            migrate(self._db, MIGRATIONS)

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
        """The block's statements in one transaction, rolled back if it raises (the caller
        holds the lock)."""
        self._db.execute(begin)
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
