"""Becoming a node of the hub: a join spends a token on a new node; a rejoin is signed.

A join token only creates a new node; node keys and host keys are unique among live nodes
(partial unique indexes, schema.py). An existing node re-registers, or rotates its key, with a
statement signed by its current key (fleet/proof.py). Both run in one transaction under the
registry's lock, so a token raced by many joins makes one node.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from pathlib import Path
from typing import Any

from edgebox.fleet import proof, tokens
from edgebox.fleet.hub.models import safe_name
from edgebox.fleet.hub.repository import JoinRefused, Registration
from edgebox.fleet.hub.store.join_tokens import TokenRecords
from edgebox.fleet.hub.store.nodes import NodeRecords
from edgebox.fleet.hub.store.schema import key_id


class Membership(TokenRecords, NodeRecords):
    """Join (token → new node) and rejoin (signed statement → same node, new secret)."""

    def __init__(self, path: Path, *, tunnel_port_base: int = 20000) -> None:
        self.tunnel_port_base = tunnel_port_base
        super().__init__(path)

    def redeem(self, token_id: str, secret: str, reg: Registration, now: float) -> dict[str, Any]:
        """Consume a token and register the node atomically; returns the node and its secret."""
        with self._lock:
            try:
                with self._transaction():
                    return self._redeem_locked(token_id, secret, reg, now)
            except JoinRefused as refusal:  # logged after the rollback, so it is kept
                if refusal.code == "invalid_token":  # anyone can send these: coalesced
                    self._coalesced_event(now, "join_refused", token_id[:64], refusal.code)
                else:
                    self._event(now, "join_refused", token_id=token_id, detail=refusal.code)
                raise

    def _redeem_locked(
        self, token_id: str, secret: str, reg: Registration, now: float
    ) -> dict[str, Any]:
        row = self._valid_token_locked(token_id, secret, now)
        # A token makes a new node, never replaces one: a live node keeps its key and host key
        # until it signs a re-registration (rejoin) or is revoked.
        self._refuse_taken_keys(reg.ssh_public_key, reg.host_key)
        name = self._node_name(row["name"] or reg.name, reg)
        node_id, node_secret = "node_" + secrets.token_hex(6), secrets.token_urlsafe(32)
        try:
            self._insert_node(node_id, name, reg, tokens.hash_secret(node_secret), token_id, now)
        except sqlite3.IntegrityError:  # the unique indexes, should a check above miss
            raise JoinRefused(409, "key_registered", "this key is already registered") from None
        self._spend_token_locked(token_id, node_id, now)
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
        with self._lock, self._transaction():
            return self._rejoin_locked(stmt, now)

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
