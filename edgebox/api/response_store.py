"""Stored Responses (`store: true`): SQLite on disk, so they survive restarts, kept for a
bounded count, bytes and age, each readable only by the key that created it.

A stored response keeps its Responses object and every input item of the conversation up
to it (the items of the responses it continued included), so `previous_response_id`
rebuilds the whole conversation from one row. Owners are hashes of API keys: a key never
sees another's responses (404, as if they did not exist), and the keys themselves are
never written. A node without keys has one owner, `local`. Past the count or byte bound, the
oldest response of the owner holding the most goes first: a key that floods the store (many
responses, or large ones padded with echoed tools) evicts its own, never another key's.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_KEEP = 10_000  # responses kept, newest first
DEFAULT_MAX_AGE_S = 30 * 86400  # as OpenAI keeps stored responses: 30 days
DEFAULT_MAX_BYTES = 1 << 30  # of stored JSON in all: a request may be 4 MB, 10k of them 40 GB
LOCAL_OWNER = "local"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    items TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created_at);
"""
_SIZES = "CREATE INDEX IF NOT EXISTS responses_owner ON responses (owner, created_at, size);"


def owner_of(api_key: str | None) -> str:
    """Who owns what a request stores: a hash of its API key, or `local` without one."""
    if not api_key:
        return LOCAL_OWNER
    return "key:" + hashlib.sha256(b"edgebox-responses\0" + api_key.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]  # the Responses object
    items: list[dict[str, Any]]  # the conversation's input items up to this response

    def conversation(self) -> list[dict[str, Any]]:
        """The items a continuation builds on: the inputs, then this response's output."""
        return self.items + list(self.response.get("output") or [])


class ResponseStore:
    """Thread-safe (calls are short and serialised; handlers run them off the event loop).
    `path` None keeps responses in memory only."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        keep: int = DEFAULT_KEEP,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.keep = keep
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path) if path is not None else ":memory:", check_same_thread=False, timeout=10
        )
        with self._lock:
            if path is not None:
                self._db.execute("PRAGMA journal_mode=WAL")
                path.chmod(0o600)  # conversations are private
            self._db.executescript(_SCHEMA)
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(responses)")]
            if "size" not in columns:  # a database from before the byte bound
                self._db.execute("ALTER TABLE responses ADD COLUMN size INTEGER NOT NULL DEFAULT 0")
                self._db.execute("UPDATE responses SET size = length(response) + length(items)")
            self._db.executescript(_SIZES)

    def put(self, owner: str, response: dict[str, Any], items: list[dict[str, Any]]) -> None:
        """Store `response` (by its id) with the conversation's input `items`; prune."""
        text, items_text = _dump(response), _dump(items)
        size = len(text) + len(items_text)
        row = (response["id"], owner, self._clock(), text, items_text, size)
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?)", row)
            self._prune()

    def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The response if `owner` stored it and it is still kept, else None."""
        with self._lock:
            row = self._db.execute(
                "SELECT response, items FROM responses WHERE id = ? AND owner = ? "
                "AND created_at >= ?",
                (response_id, owner, self._clock() - self.max_age_s),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def delete(self, owner: str, response_id: str) -> bool:
        """Forget a response; False if `owner` has none by that id."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "DELETE FROM responses WHERE id = ? AND owner = ?", (response_id, owner)
            )
        return cursor.rowcount > 0

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def stored_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT TOTAL(size) FROM responses").fetchone()[0])

    def _prune(self) -> None:
        """Past the age limit: gone. Beyond `keep` or `max_bytes`: the oldest of the owner
        holding the most (by count or by bytes, whichever is exceeded) go, down to 1% under
        the bound so that the next puts find room at once (the lock is held)."""
        self._db.execute(
            "DELETE FROM responses WHERE created_at < ?", (self._clock() - self.max_age_s,)
        )
        count, size = self._db.execute("SELECT COUNT(*), TOTAL(size) FROM responses").fetchone()
        if count <= self.keep and size <= self.max_bytes:
            return
        keep, max_bytes = self.keep - self.keep // 100, self.max_bytes - self.max_bytes // 100
        while True:
            owners = self._db.execute(
                "SELECT owner, COUNT(*), TOTAL(size) FROM responses GROUP BY owner"
            ).fetchall()
            count, size = sum(o[1] for o in owners), sum(o[2] for o in owners)
            if count <= keep and size <= max_bytes:
                return
            by = 1 if count > keep else 2
            heaviest = max(owners, key=lambda o: o[by])[0]
            self._db.execute(
                "DELETE FROM responses WHERE rowid IN (SELECT rowid FROM responses "
                "WHERE owner = ? ORDER BY created_at, rowid LIMIT ?)",
                (heaviest, count - keep if by == 1 else 1),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
