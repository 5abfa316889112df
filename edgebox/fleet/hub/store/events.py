"""The registry's audit log: one row an event, bounded in rows and in how fast it can grow.

The newest MAX_EVENTS rows are kept, and refusals of unknown tokens are coalesced into one
counted row per minute, so unauthenticated requests cannot grow the file without bound.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgebox.fleet.hub.store.database import RegistryDatabase

MAX_EVENTS = 10_000  # the audit log keeps the newest this many rows
TRIM_EVERY = 100  # inserts between trims
COALESCE_S = 60.0  # unknown-token refusals within this window share one row (with a count)


class EventLog(RegistryDatabase):
    """Writes events for the other parts of the registry (under their lock) and reads them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._inserts = 0
        self._coalescing: dict[str, tuple[int, float]] = {}  # key -> (event seq, window start)

    def _event(
        self,
        at: float,
        kind: str,
        node_id: str | None = None,
        token_id: str | None = None,
        detail: str = "",
    ) -> int:
        cur = self._db.execute(
            "INSERT INTO events (at, kind, node_id, token_id, detail) VALUES (?, ?, ?, ?, ?)",
            (at, kind, node_id, token_id, detail),
        )
        seq = int(cur.lastrowid or 0)
        self._inserts += 1
        if self._inserts % TRIM_EVERY == 0:
            self._db.execute("DELETE FROM events WHERE seq <= ?", (seq - MAX_EVENTS,))
        return seq

    def _coalesced_event(self, at: float, kind: str, token_id: str, detail: str) -> None:
        """One row per COALESCE_S window for a flood of alike events (count, latest token id)."""
        key = f"{kind}:{detail}"
        seq, started = self._coalescing.get(key, (0, -COALESCE_S))
        if at - started < COALESCE_S:
            cur = self._db.execute(
                "UPDATE events SET count = count + 1, at = ?, token_id = ? WHERE seq = ?",
                (at, token_id, seq),
            )
            if cur.rowcount:
                return
        self._coalescing[key] = (self._event(at, kind, token_id=token_id, detail=detail), at)

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in reversed(rows)]
