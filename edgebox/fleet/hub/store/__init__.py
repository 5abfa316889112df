"""The hub's registry: nodes, join tokens, users, the blob registry and audit events in one
SQLite file (WAL mode), implementing `repository.HubRepository`.

Each concern is one module, and `HubStore` puts them together over one connection and lock:

- database.py    the connection, its lock, transactions; schema.py the tables and migrations
- events.py      the audit log, bounded in rows and in how fast refusals can grow it
- join_tokens.py join tokens (stored as sha256, checked in constant time)
- nodes.py       heartbeats, offline marking, revocation, node lookups
- membership.py  join (a token spent on a new node) and signed rejoin, atomically
- blobs.py       which node holds which model blob
- users.py       hub users' SSH keys and read tokens (stored as sha256)
"""

from __future__ import annotations

from edgebox.fleet.hub.store.blobs import BlobRecords
from edgebox.fleet.hub.store.membership import Membership
from edgebox.fleet.hub.store.users import UserRecords

DB_FILE = "hub.sqlite3"

__all__ = ["DB_FILE", "HubStore"]


class HubStore(Membership, BlobRecords, UserRecords):
    """The registry the hub runs: `HubStore(path, tunnel_port_base=20000)`; close() when done."""
