"""Hub users: people who reach nodes through the relay and read the node list.

A user has an SSH public key and an `ebu_` read token; the registry keeps only the token's
sha256, and finds a user by that digest, never by the token itself.
"""

from __future__ import annotations

import secrets
from typing import Any

from edgebox.fleet import tokens
from edgebox.fleet.hub.store.events import EventLog


class UserRecords(EventLog):
    """The `users` table: add (a new read token), change the key, remove, list, authenticate."""

    def add_user(self, name: str, ssh_public_key: str, now: float) -> str:
        """Add or replace a user's SSH key; returns a new read token (stored hashed)."""
        token = "ebu_" + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO users (name, ssh_public_key, token_hash, created_at)"
                " VALUES (?, ?, ?, ?)",
                (name, ssh_public_key, tokens.hash_secret(token), now),
            )
            self._event(now, "user_add", detail=name)
        return token

    def set_user_key(self, name: str, ssh_public_key: str, now: float) -> None:
        """Replace a user's SSH key (the user's own login does this for its laptop)."""
        with self._lock:
            self._db.execute(
                "UPDATE users SET ssh_public_key = ? WHERE name = ?", (ssh_public_key, name)
            )
            self._event(now, "user_key", detail=name)

    def remove_user(self, name: str, now: float) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM users WHERE name = ?", (name,))
            if cur.rowcount:
                self._event(now, "user_remove", detail=name)
        return cur.rowcount > 0

    def users(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, ssh_public_key, created_at FROM users ORDER BY name"
            ).fetchall()
        return [dict(r) for r in rows]

    def user_for_token(self, token: str) -> str | None:
        """The user holding this read token, or None."""
        digest = tokens.hash_secret(token)
        with self._lock:
            row = self._db.execute("SELECT name FROM users WHERE token_hash = ?", (digest,))
            found = row.fetchone()
        return found["name"] if found else None
