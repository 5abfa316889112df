"""The hub's registry: nodes, join tokens and audit events in one SQLite file (WAL mode).

One connection guarded by a lock: the hub's writes are tiny (a heartbeat is one UPDATE), so a
lock costs less than a pool and keeps redeeming a token atomic. Schema changes bump
``PRAGMA user_version`` and add a step to schema.MIGRATIONS.

A join token only creates a new node; node keys and host keys are unique among live nodes
(partial unique indexes). An existing node re-registers, or rotates its key, with a statement
signed by its current key (fleet/proof.py). The events table is bounded: the newest
MAX_EVENTS rows are kept, and refusals of unknown tokens are coalesced into one counted row
per minute, so unauthenticated requests cannot grow the file without bound.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from pathlib import Path
from typing import Any

from edgebox.fleet import proof, tokens
from edgebox.fleet.hub.models import safe_name
from edgebox.fleet.hub.repository import JoinRefused, Registration
from edgebox.fleet.hub.schema import MIGRATIONS, key_id, migrate
from edgebox.fleet.tokens import TokenState

DB_FILE = "hub.sqlite3"

_MIGRATIONS = MIGRATIONS  # the steps, in edgebox/fleet/hub/schema.py
MAX_EVENTS = 10_000  # the audit log keeps the newest this many rows
TRIM_EVERY = 100  # inserts between trims
COALESCE_S = 60.0  # unknown-token refusals within this window share one row (with a count)

_REFUSALS = {
    TokenState.REVOKED: (403, "token_revoked", "this join token was revoked on the hub"),
    TokenState.USED: (409, "token_used", "this join token was already used; create a new one"),
    TokenState.EXPIRED: (410, "token_expired", "this join token has expired; create a new one"),
}


class HubStore:
    def __init__(self, path: Path, *, tunnel_port_base: int = 20000) -> None:
        self.path = path
        self.tunnel_port_base = tunnel_port_base
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # The write-ahead log is checkpointed every 256 pages (1 MiB) and cut back to 1 MiB
        # after, instead of SQLite's 1000 pages left at their largest size.
        self._db.execute("PRAGMA wal_autocheckpoint=256")
        self._db.execute(f"PRAGMA journal_size_limit={1 << 20}")
        self._inserts = 0
        self._coalescing: dict[str, tuple[int, float]] = {}  # key -> (event seq, window start)
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            migrate(self._db, _MIGRATIONS)

    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    # nodes

    def redeem(self, token_id: str, secret: str, reg: Registration, now: float) -> dict[str, Any]:
        """Consume a token and register the node atomically; returns the node and its secret."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                node = self._redeem_locked(token_id, secret, reg, now)
            except JoinRefused as refusal:
                self._db.execute("ROLLBACK")
                if refusal.code == "invalid_token":  # anyone can send these: coalesced
                    self._coalesced_event(now, "join_refused", token_id[:64], refusal.code)
                else:
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
        st = _token_state(row, now)
        if st is not TokenState.VALID:
            raise JoinRefused(*_REFUSALS[st])
        # A token makes a new node, never replaces one: a live node keeps its key and host key
        # until it signs a re-registration (rejoin) or is revoked.
        self._refuse_taken_keys(reg.ssh_public_key, reg.host_key)
        name = self._node_name(row["name"] or reg.name, reg)
        node_id, node_secret = "node_" + secrets.token_hex(6), secrets.token_urlsafe(32)
        try:
            self._insert_node(node_id, name, reg, tokens.hash_secret(node_secret), token_id, now)
        except sqlite3.IntegrityError:  # the unique indexes, should a check above miss
            raise JoinRefused(409, "key_registered", "this key is already registered") from None
        self._db.execute(
            "UPDATE tokens SET used_at = ?, node_id = ? WHERE id = ?", (now, node_id, token_id)
        )
        self._event(now, "join", node_id=node_id, token_id=token_id, detail=name)
        node = self._node_locked(node_id)
        assert node is not None
        return node | {"node_secret": node_secret}

    def _node_name(self, chosen: str | None, reg: Registration) -> str:
        """The token's or the node's chosen name (409 when taken: an explicit name is never
        silently changed), else the box's hostname with a free `-2`, `-3`... suffix."""
        name = chosen or safe_name(str(reg.profile.get("hostname") or ""))
        if self._name_taken(name):
            if chosen:
                raise JoinRefused(409, "name_taken", f"a node named {name!r} is already registered")
            base, n = name, 2
            while self._name_taken(name := f"{base}-{n}"):
                n += 1
        return name

    def _insert_node(
        self,
        node_id: str,
        name: str,
        reg: Registration,
        secret_hash: str,
        token_id: str,
        now: float,
    ) -> None:
        values = {
            "id": node_id,
            "name": name,
            "key": reg.ssh_public_key,
            "key_id": key_id(reg.ssh_public_key),
            "host_key": reg.host_key,
            "host_key_id": key_id(reg.host_key),
            "profile": json.dumps(reg.profile),
            "models": json.dumps(reg.models),
            "secret_hash": secret_hash,
            "port": self._free_tunnel_port(),
            "token_id": token_id,
            "now": now,
        }
        self._db.execute(
            "INSERT INTO nodes (id, name, ssh_public_key, key_id, host_key, host_key_id,"
            " profile, models, secret_hash, tunnel_port, status, token_id, joined_at,"
            " last_heartbeat) VALUES (:id, :name, :key, :key_id, :host_key, :host_key_id,"
            " :profile, :models, :secret_hash, :port, 'online', :token_id, :now, :now)",
            values,
        )

    def rejoin(self, body: dict[str, Any], hub: str, now: float) -> dict[str, Any]:
        """Re-register the live node whose key signed `body` (fleet/proof.py): a new node
        secret, the new key if it rotates, its host key; the same id, name and tunnel port.
        Returns the node with `node_secret`, and `old_key` when the key changed."""
        stmt, new_key = body["statement"], body["statement"]["new_key"]
        if stmt.get("purpose") != proof.PURPOSE or stmt.get("hub") != hub:
            raise JoinRefused(400, "wrong_statement", "the statement is not for this hub")
        try:
            proof.verify(stmt["key"], stmt, body["signature"])
            if key_id(new_key) != key_id(stmt["key"]):
                proof.verify(new_key, stmt, body.get("new_key_signature") or "")
        except proof.ProofError as exc:
            raise JoinRefused(401, "bad_signature", str(exc)) from None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                node = self._rejoin_locked(stmt, now)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return node

    def _rejoin_locked(self, stmt: dict[str, Any], now: float) -> dict[str, Any]:
        sql = (
            "SELECT id, ssh_public_key, proof_ms FROM nodes WHERE key_id = ? AND revoked_at IS NULL"
        )
        row = self._db.execute(sql, (key_id(stmt["key"]),)).fetchone()
        if row is None:
            raise JoinRefused(
                404,
                "unknown_node_key",
                "no live node has this key on the hub (revoked? then join again with a new token)",
            )
        try:
            proof.check_fresh(stmt["ts_ms"], now=now, last_ms=row["proof_ms"])
        except proof.ProofError as exc:
            raise JoinRefused(401, "stale_statement", str(exc)) from None
        self._refuse_taken_keys(stmt["new_key"], stmt["host_key"], but=row["id"])
        secret = secrets.token_urlsafe(32)
        self._db.execute(
            "UPDATE nodes SET ssh_public_key = ?, key_id = ?, host_key = ?, host_key_id = ?,"
            " secret_hash = ?, proof_ms = ?, status = 'online', last_heartbeat = ? WHERE id = ?",
            (
                stmt["new_key"],
                key_id(stmt["new_key"]),
                stmt["host_key"],
                key_id(stmt["host_key"]),
                tokens.hash_secret(secret),
                stmt["ts_ms"],
                now,
                row["id"],
            ),
        )
        rotated = key_id(stmt["new_key"]) != key_id(row["ssh_public_key"])
        if rotated:  # a rotation replaces the node's API key too (a new generation)
            self._db.execute(
                "UPDATE nodes SET api_key_gen = api_key_gen + 1 WHERE id = ?", (row["id"],)
            )
        self._event(now, "node_key_rotate" if rotated else "node_rejoin", node_id=row["id"])
        node = self._node_locked(row["id"])
        assert node is not None
        return node | {"node_secret": secret, "old_key": row["ssh_public_key"] if rotated else None}

    def _refuse_taken_keys(self, key: str, host_key: str | None, *, but: str = "") -> None:
        """409 when a live node other than `but` holds this node key or sshd host key."""
        for column, value, code, what in (
            ("key_id", key_id(key), "key_registered", "node key"),
            ("host_key_id", key_id(host_key), "host_key_registered", "sshd host key"),
        ):
            if value is None:
                continue
            row = self._db.execute(
                f"SELECT id, name FROM nodes WHERE {column} = ? AND revoked_at IS NULL AND id != ?",
                (value, but),
            ).fetchone()
            if row is not None:
                hint = (
                    "; a join token never replaces a node: re-register it with "
                    "`edgebox node rejoin` (signed by its key) or revoke it first"
                )
                raise JoinRefused(
                    409,
                    code,
                    f"this {what} already belongs to node {row['name']} ({row['id']})" + hint,
                )

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
        ssh_user: str | None = None,
    ) -> dict[str, Any] | None:
        """Record a beat from the node owning this secret; None if no live node has it.

        `api_url` replaces the recorded API address (None clears it: the node stopped saying);
        `ssh_user` the account hub users' keys are installed for there (None: none)."""
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
                " ssh_user = ?, status = 'online' WHERE id = ?",
                (now, json.dumps(telemetry), json.dumps(models), api_url, ssh_user, row["id"]),
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
            self._db.execute(
                "UPDATE nodes SET status = 'revoked', revoked_at = ? WHERE id = ?",
                (now, node["id"]),
            )
            self._event(now, "node_revoke", node_id=node["id"])
            self._db.execute("DELETE FROM node_blobs WHERE node_id = ?", (node["id"],))
            return self._node_locked(node["id"])

    # the blob registry (which node's store holds which model blob)

    def set_blobs(self, node_id: str, digests: list[str]) -> None:
        """Replace what `node_id` holds (its last beat's list), in one transaction."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute("DELETE FROM node_blobs WHERE node_id = ?", (node_id,))
                self._db.executemany(
                    "INSERT OR IGNORE INTO node_blobs (node_id, digest) VALUES (?, ?)",
                    [(node_id, d) for d in digests],
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def forget_blobs(self, *, seen_before: float) -> list[str]:
        """Drop the registry rows of nodes whose last beat is before `seen_before` (or that
        never beat); returns their ids."""
        with self._lock:
            rows = self._db.execute(  # one index probe a node: cheap enough for every sweep
                "SELECT id FROM nodes WHERE COALESCE(last_heartbeat, 0) < ?"
                " AND EXISTS (SELECT 1 FROM node_blobs WHERE node_id = nodes.id)",
                (seen_before,),
            ).fetchall()
            ids = [r[0] for r in rows]
            self._db.executemany("DELETE FROM node_blobs WHERE node_id = ?", [(i,) for i in ids])
        return ids

    def blob_map(self) -> dict[str, frozenset[str]]:
        """Node id → the blobs it holds, for every node not revoked (rows of revoked or
        removed nodes are dropped on the way)."""
        with self._lock:
            self._db.execute(
                "DELETE FROM node_blobs WHERE node_id NOT IN"
                " (SELECT id FROM nodes WHERE revoked_at IS NULL)"
            )
            rows = self._db.execute("SELECT node_id, digest FROM node_blobs").fetchall()
        found: dict[str, set[str]] = {}
        for node_id, digest in rows:
            found.setdefault(node_id, set()).add(digest)
        return {n: frozenset(d) for n, d in found.items()}

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

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM events ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [dict(r) for r in reversed(rows)]


def _token_state(row: sqlite3.Row, now: float) -> TokenState:
    return tokens.state(
        expires_at=row["expires_at"], used_at=row["used_at"], revoked_at=row["revoked_at"], now=now
    )


def _node_dict(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    for internal in ("secret_hash", "key_id", "host_key_id", "proof_ms"):
        item.pop(internal, None)
    for key in ("profile", "models", "telemetry"):
        item[key] = json.loads(item[key])
    return item
