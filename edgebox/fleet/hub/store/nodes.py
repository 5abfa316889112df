"""The registered nodes: heartbeats, going offline, revocation and lookups.

A node is found by its secret only through the secret's sha256, in the same statement as the
write, so a revoked node's beat records nothing. Records leave out the secret hash, the key
ids and the last signed statement's time (`_node_dict`).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from edgebox.fleet import tokens
from edgebox.fleet.hub.store.events import EventLog

_INTERNAL = ("secret_hash", "key_id", "host_key_id", "proof_ms")  # never leave the registry


class NodeRecords(EventLog):
    """The `nodes` table as the heartbeat, the offline sweeper and the node routes use it."""

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


def _node_dict(row: sqlite3.Row) -> dict[str, Any]:
    item = dict(row)
    for internal in _INTERNAL:
        item.pop(internal, None)
    for key in ("profile", "models", "telemetry"):
        item[key] = json.loads(item[key])
    return item
