"""Keep the relay's two authorized_keys files in step with the registry.

The hub rewrites them (atomically) after every join, revocation and user change; the relay
sshd reads them at each login, so no reload is needed. The rendering and its policy live in
fleet/relay.py; this module only maps registry rows to its records.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edgebox.fleet._files import write_atomic
from edgebox.fleet.relay import (
    NodeRecord,
    RelayConfigError,
    UserRecord,
    render_node_keys,
    render_user_keys,
)

log = logging.getLogger("edgebox.hub")


def relay_nodes(nodes: list[dict[str, Any]]) -> list[NodeRecord]:
    """Registry rows → the relay's records: every node not revoked (offline ones included, so
    a node can reconnect its tunnel after an outage)."""
    return [
        NodeRecord(
            name=n["name"],
            id=n["id"],
            public_key=n["ssh_public_key"],
            host_key=n["host_key"] or "",
            tunnel_port=n["tunnel_port"],
        )
        for n in nodes
        if n["revoked_at"] is None
    ]


def write_node_keys(path: Path, nodes: list[dict[str, Any]]) -> None:
    """Rewrite the tunnel account's authorized_keys (0644: sshd reads it as that account)."""
    try:
        text = render_node_keys(relay_nodes(nodes))
    except RelayConfigError as exc:  # keep the last good file rather than open or empty it
        log.error("relay keys not rewritten: %s", exc)
        return
    write_atomic(path, text.encode(), mode=0o644)


def write_user_keys(path: Path, users: list[dict[str, Any]], nodes: list[dict[str, Any]]) -> None:
    """Rewrite the jump account's authorized_keys: each user may open the live nodes' ports."""
    try:
        # a user added without a key has none until their `edgebox login` registers one
        records = [UserRecord(u["name"], u["ssh_public_key"]) for u in users if u["ssh_public_key"]]
        text = render_user_keys(records, relay_nodes(nodes))
    except RelayConfigError as exc:
        log.error("relay user keys not rewritten: %s", exc)
        return
    write_atomic(path, text.encode(), mode=0o644)
