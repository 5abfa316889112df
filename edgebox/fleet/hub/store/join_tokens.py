"""Join tokens on the hub: created by the admin, shown once, stored as a sha256 of the secret.

A token is checked in constant time (`tokens.secret_matches`) and spent in the same
transaction that registers its node (membership.py), so one token makes at most one node.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from edgebox.fleet import tokens
from edgebox.fleet.hub.repository import JoinRefused
from edgebox.fleet.hub.store.events import EventLog
from edgebox.fleet.tokens import TokenState

_REFUSALS = {
    TokenState.REVOKED: (403, "token_revoked", "this join token was revoked on the hub"),
    TokenState.USED: (409, "token_used", "this join token was already used; create a new one"),
    TokenState.EXPIRED: (410, "token_expired", "this join token has expired; create a new one"),
}


class TokenRecords(EventLog):
    """The `tokens` table: create, list (never the hash), revoke, check and spend."""

    def create_token(self, *, ttl: float, name: str | None, now: float) -> tuple[str, str, float]:
        """A new token: (id, secret, expires_at). The secret is returned once, stored hashed."""
        token_id, secret = tokens.new_token_id(), tokens.new_secret()
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens (id, secret_hash, name, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (token_id, tokens.hash_secret(secret), name, now, now + ttl),
            )
            self._event(now, "token_create", token_id=token_id, detail=name or "")
        return token_id, secret, now + ttl

    def list_tokens(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM tokens ORDER BY created_at").fetchall()
        out = []
        for row in rows:
            item = dict(row)
            del item["secret_hash"]
            item["state"] = _token_state(row, now).value
            out.append(item)
        return out

    def revoke_token(self, token_id: str, now: float) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            if cur.rowcount:
                self._event(now, "token_revoke", token_id=token_id)
        return cur.rowcount > 0

    def _valid_token_locked(self, token_id: str, secret: str, now: float) -> sqlite3.Row:
        """The token's row when `secret` is its own and it is still valid; else JoinRefused."""
        row = self._db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None or not tokens.secret_matches(secret, row["secret_hash"]):
            raise JoinRefused(401, "invalid_token", "the hub does not know this join token")
        st = _token_state(row, now)
        if st is not TokenState.VALID:
            raise JoinRefused(*_REFUSALS[st])
        return row

    def _spend_token_locked(self, token_id: str, node_id: str, now: float) -> None:
        self._db.execute(
            "UPDATE tokens SET used_at = ?, node_id = ? WHERE id = ?", (now, node_id, token_id)
        )


def _token_state(row: sqlite3.Row, now: float) -> TokenState:
    return tokens.state(
        expires_at=row["expires_at"], used_at=row["used_at"], revoked_at=row["revoked_at"], now=now
    )
