"""The hub registry's schema and its migrations (``PRAGMA user_version`` counts the steps run).

A step is SQL, or a function of the connection for what SQL alone cannot do; each runs in
one transaction with the version bump, so a failed step leaves the file as it was.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

log = logging.getLogger("edgebox.hub")


def key_id(line: str | None) -> str | None:
    """A key's identity: `TYPE BASE64` without the comment (None for no key)."""
    if not line:
        return None
    return " ".join(line.split()[:2]) or None


def _unique_keys(db: sqlite3.Connection) -> None:
    """Version 4: node keys and host keys unique among live nodes; coalesced events.

    Older hubs let a second join with the same key revoke the first, and never compared host
    keys, so a registry may hold live duplicates: the newest keeps the key, the older ones are
    revoked (logged, with an event), because two live nodes with one key is the state to end."""
    db.execute("ALTER TABLE nodes ADD COLUMN key_id TEXT")
    db.execute("ALTER TABLE nodes ADD COLUMN host_key_id TEXT")
    db.execute("ALTER TABLE nodes ADD COLUMN proof_ms INTEGER")  # last signed statement's time
    db.execute("ALTER TABLE events ADD COLUMN count INTEGER NOT NULL DEFAULT 1")
    rows = db.execute("SELECT id, ssh_public_key, host_key FROM nodes").fetchall()
    for node_id, key, host_key in rows:
        db.execute(
            "UPDATE nodes SET key_id = ?, host_key_id = ? WHERE id = ?",
            (key_id(key), key_id(host_key), node_id),
        )
    now = time.time()
    for column in ("key_id", "host_key_id"):
        dupes = db.execute(
            f"SELECT id FROM nodes n WHERE revoked_at IS NULL AND {column} IS NOT NULL AND EXISTS"
            f" (SELECT 1 FROM nodes m WHERE m.revoked_at IS NULL AND m.{column} = n.{column}"
            "  AND (m.joined_at > n.joined_at OR (m.joined_at = n.joined_at AND m.id > n.id)))"
        ).fetchall()
        for (node_id,) in dupes:
            log.warning("node %s revoked at upgrade: a newer node has the same %s", node_id, column)
            db.execute(
                "UPDATE nodes SET status = 'revoked', revoked_at = ? WHERE id = ?", (now, node_id)
            )
            db.execute(
                "INSERT INTO events (at, kind, node_id, detail) VALUES (?, ?, ?, ?)",
                (now, "node_revoke", node_id, f"duplicate {column} at upgrade"),
            )
    db.execute("CREATE UNIQUE INDEX nodes_live_key ON nodes (key_id) WHERE revoked_at IS NULL")
    db.execute(
        "CREATE UNIQUE INDEX nodes_live_host_key ON nodes (host_key_id)"
        " WHERE revoked_at IS NULL AND host_key_id IS NOT NULL"
    )


MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
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
    _unique_keys,
    # the account hub users' SSH keys are installed for on the node (None: the node keeps them
    # out), and the generation of the node's API key (fleet/node_keys.py; bumped on rotation)
    """
    ALTER TABLE nodes ADD COLUMN ssh_user TEXT;
    ALTER TABLE nodes ADD COLUMN api_key_gen INTEGER NOT NULL DEFAULT 0;
    """,
    # which model blobs (sha256) each node's store holds, as its last beat said (at most
    # MAX_BEAT_BLOBS a node), so `GET /v1/hub/blobs/{sha256}` answers after a hub restart
    """
    CREATE TABLE node_blobs (
        node_id TEXT NOT NULL, digest TEXT NOT NULL, PRIMARY KEY (node_id, digest))
        WITHOUT ROWID;
    CREATE INDEX node_blobs_digest ON node_blobs (digest);
    """,
]


def migrate(
    db: sqlite3.Connection, steps: list[str | Callable[[sqlite3.Connection], None]]
) -> None:
    """Run the steps after the file's version, each with its version bump in one transaction."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for number, step in enumerate(steps[version:], start=version + 1):
        if isinstance(step, str):
            db.executescript(f"BEGIN; {step}; PRAGMA user_version={number}; COMMIT;")
            continue
        db.execute("BEGIN")
        try:
            step(db)
            db.execute(f"PRAGMA user_version={number}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
