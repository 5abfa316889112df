"""The hub's registry: nodes, join tokens and audit events in one SQLite file (WAL mode).

One connection guarded by a lock: the hub's writes are tiny (a heartbeat is one UPDATE), so a
lock costs less than a pool and keeps redeeming a token atomic. Schema changes bump
``PRAGMA user_version`` and add a step to ``_MIGRATIONS``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebox.fleet import tokens
from edgebox.fleet.tokens import TokenState

DB_FILE = "hub.sqlite3"

_MIGRATIONS = [
    """
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, ssh_public_key TEXT NOT NULL,
        host_key TEXT, profile TEXT NOT NULL, models TEXT NOT NULL DEFAULT '[]',
        telemetry TEXT NOT NULL DEFAULT '{}', secret_hash TEXT NOT NULL UNIQUE,
        tunnel_port INTEGER NOT NULL, status TEXT NOT NULL, token_id TEXT,
        joined_at REAL NOT NULL, last_heartbeat REAL, revoked_at REAL);
    CREATE UNIQUE INDEX nodes_live_port ON nodes (tunnel_port) WHERE revoked_at IS NULL;
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, name TEXT, created_at REAL NOT NULL,
        expires_at REAL NOT NULL, used_at REAL, revoked_at REAL, node_id TEXT);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, kind TEXT NOT NULL,
        node_id TEXT, token_id TEXT, detail TEXT NOT NULL DEFAULT '');
    """,
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY, ssh_public_key TEXT NOT NULL, token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL);
    """,
    # the node's API as the hub saw it: the heartbeat's peer address and the node's API port
    "ALTER TABLE nodes ADD COLUMN api_url TEXT",
]

_REFUSALS = {
    TokenState.REVOKED: (403, "token_revoked", "this join token was revoked on the hub"),
    TokenState.USED: (409, "token_used", "this join token was already used; create a new one"),
    TokenState.EXPIRED: (410, "token_expired", "this join token has expired; create a new one"),
}


class JoinRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Registration:
    name: str | None
    ssh_public_key: str
    host_key: str | None
    profile: dict[str, Any]
    models: list[Any]


class HubStore:
    def __init__(self, path: Path, *, tunnel_port_base: int = 20000) -> None:
        self.path = path
        self.tunnel_port_base = tunnel_port_base
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            for step, script in enumerate(_MIGRATIONS[version:], start=version + 1):
                self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={step}; COMMIT;")

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _event(self, at: float, kind: str, node_id: str | None = None, token_id: str | None = None,
               detail: str = "") -> None:  # fmt: skip
        self._db.execute(
            "INSERT INTO events (at, kind, node_id, token_id, detail) VALUES (?, ?, ?, ?, ?)",
            (at, kind, node_id, token_id, detail),
        )

    # tokens

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
            item["state"] = tokens.state(
                expires_at=row["expires_at"], used_at=row["used_at"],
                revoked_at=row["revoked_at"], now=now,
            ).value  # fmt: skip
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

    # nodes

    def redeem(self, token_id: str, secret: str, reg: Registration, now: float) -> dict[str, Any]:
        """Consume a token and register the node atomically; returns the node and its secret."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                node = self._redeem_locked(token_id, secret, reg, now)
            except JoinRefused as refusal:
                self._db.execute("ROLLBACK")
                self._event(now, "join_refused", token_id=token_id, detail=refusal.code)
                raise
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return node

    def _redeem_locked(
        self, token_id: str, secret: str, reg: Registration, now: float
    ) -> dict[str, Any]:
        row = self._db.execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None or not tokens.secret_matches(secret, row["secret_hash"]):
            raise JoinRefused(401, "invalid_token", "the hub does not know this join token")
        st = tokens.state(expires_at=row["expires_at"], used_at=row["used_at"],
                          revoked_at=row["revoked_at"], now=now)  # fmt: skip
        if st is not TokenState.VALID:
            raise JoinRefused(*_REFUSALS[st])
        # A box joining again (same node key) replaces its old record and keeps its tunnel port.
        old = self._db.execute(
            "SELECT id, tunnel_port FROM nodes WHERE ssh_public_key = ? AND revoked_at IS NULL",
            (reg.ssh_public_key,),
        ).fetchone()
        if old is not None:
            self._db.execute("UPDATE nodes SET status = 'revoked', revoked_at = ? WHERE id = ?",
                             (now, old["id"]))  # fmt: skip
        chosen = row["name"] or reg.name
        name = chosen or str(reg.profile.get("hostname") or "node")
        if self._name_taken(name):
            if chosen:  # an explicit name is never silently changed
                raise JoinRefused(409, "name_taken", f"a node named {name!r} is already registered")
            base, n = name, 2
            while self._name_taken(name := f"{base}-{n}"):
                n += 1
        node_id, node_secret = "node_" + secrets.token_hex(6), secrets.token_urlsafe(32)
        port = old["tunnel_port"] if old is not None else self._free_tunnel_port()
        self._db.execute(
            "INSERT INTO nodes (id, name, ssh_public_key, host_key, profile, models, secret_hash,"
            " tunnel_port, status, token_id, joined_at, last_heartbeat)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'online', ?, ?, ?)",
            (node_id, name, reg.ssh_public_key, reg.host_key, json.dumps(reg.profile),
             json.dumps(reg.models), tokens.hash_secret(node_secret), port, token_id, now, now),
        )  # fmt: skip
        self._db.execute("UPDATE tokens SET used_at = ?, node_id = ? WHERE id = ?",
                         (now, node_id, token_id))  # fmt: skip
        if old is not None:
            self._event(now, "node_replaced", node_id=old["id"], detail=f"by {node_id}")
        self._event(now, "join", node_id=node_id, token_id=token_id, detail=name)
        node = self._node_locked(node_id)
        assert node is not None
        return node | {"node_secret": node_secret}

    def _name_taken(self, name: str) -> bool:
        sql = "SELECT 1 FROM nodes WHERE name = ? AND revoked_at IS NULL"
        return self._db.execute(sql, (name,)).fetchone() is not None

    def _free_tunnel_port(self) -> int:
        sql = "SELECT tunnel_port FROM nodes WHERE revoked_at IS NULL"
        used = {r[0] for r in self._db.execute(sql)}
        port = self.tunnel_port_base
        while port in used:
            port += 1
        return port

    def heartbeat(
        self,
        node_secret: str,
        telemetry: dict[str, Any],
        models: list[Any],
        now: float,
        api_url: str | None = None,
    ) -> dict[str, Any] | None:
        """Record a beat from the node owning this secret; None if no live node has it.

        `api_url` replaces the recorded API address (None clears it: the node stopped saying)."""
        digest = tokens.hash_secret(node_secret)
        with self._lock:
            row = self._db.execute(
                "SELECT id, status FROM nodes WHERE secret_hash = ? AND revoked_at IS NULL",
                (digest,),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE nodes SET last_heartbeat = ?, telemetry = ?, models = ?, api_url = ?,"
                " status = 'online' WHERE id = ?",
                (now, json.dumps(telemetry), json.dumps(models), api_url, row["id"]),
            )
            if row["status"] != "online":
                self._event(now, "online", node_id=row["id"])
            return self._node_locked(row["id"])

    def mark_offline(self, *, older_than: float, now: float) -> list[str]:
        """Nodes whose last beat is before `older_than` become offline (kept, never dropped)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM nodes WHERE status = 'online' AND last_heartbeat < ?",
                (older_than,),
            ).fetchall()
            ids = [r["id"] for r in rows]
            for node_id in ids:
                self._db.execute("UPDATE nodes SET status = 'offline' WHERE id = ?", (node_id,))
                self._event(now, "offline", node_id=node_id)
        return ids

    def revoke_node(self, key: str, now: float) -> dict[str, Any] | None:
        with self._lock:
            node = self._node_locked(key)
            if node is None:
                return None
            self._db.execute("UPDATE nodes SET status = 'revoked', revoked_at = ? WHERE id = ?",
                             (now, node["id"]))  # fmt: skip
            self._event(now, "node_revoke", node_id=node["id"])
            return self._node_locked(node["id"])

    def nodes(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM nodes ORDER BY joined_at").fetchall()
        return [_node_dict(r) for r in rows]

    def node(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._node_locked(key)

    def _node_locked(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT * FROM nodes WHERE id = ? OR name = ? ORDER BY revoked_at IS NOT NULL LIMIT 1",
            (key, key),
        ).fetchone()
        return _node_dict(row) if row else None

    # users (people who reach nodes through the relay, and read the node list)

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

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in reversed(rows)]


def _node_dict(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    del item["secret_hash"]
    for key in ("profile", "models", "telemetry"):
        item[key] = json.loads(item[key])
    return item
