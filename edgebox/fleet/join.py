"""`edgebox join`: register this box with a hub using a pasted token.

Order matters: the token is parsed, the hub's certificate is checked against the pinned
fingerprint in the TLS handshake, and only then is the secret sent. The hub's answer (node id,
node secret, tunnel port, hub SSH address) is saved to EDGEBOX_HOME/fleet.json, mode 0600.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from edgebox.fleet import tokens
from edgebox.fleet._files import write_atomic
from edgebox.fleet.hub.client import HubClient
from edgebox.fleet.identity import edgebox_home, load_identity

FLEET_FILE = "fleet.json"
HOST_KEY_PATHS = (
    "/etc/ssh/ssh_host_ed25519_key.pub",
    "/usr/local/etc/ssh/ssh_host_ed25519_key.pub",
)


def fleet_path(home: Path | None = None) -> Path:
    return (home or edgebox_home()) / FLEET_FILE


def load_fleet(home: Path | None = None) -> dict[str, Any] | None:
    """This box's membership (written at join), or None when it has not joined a hub."""
    path = fleet_path(home)
    return json.loads(path.read_text()) if path.exists() else None


def local_host_key() -> str | None:
    """The sshd host key, so clients can pin it when they reach this box through the hub
    ($EDGEBOX_SSHD_HOST_KEY names another .pub file; empty means none)."""
    import os

    from edgebox.fleet.identity import SSHD_HOST_KEY_ENV

    env = os.environ.get(SSHD_HOST_KEY_ENV)
    if env is not None:
        return Path(env).read_text().strip() if env and Path(env).exists() else None
    for candidate in HOST_KEY_PATHS:
        path = Path(candidate)
        if path.exists():
            return path.read_text().strip()
    return None


def local_profile() -> dict[str, Any]:
    from edgebox.hardware import probe

    return dataclasses.asdict(probe(measure=False))


def join(
    token_line: str,
    *,
    name: str | None = None,
    home: Path | None = None,
    profile: dict[str, Any] | None = None,
    models: list[Any] | None = None,
) -> dict[str, Any]:
    """Join the hub the token names; returns what was saved to fleet.json (with the secret)."""
    token = tokens.parse(token_line)  # TokenError for a bad line, before any network
    home = home or edgebox_home()
    node = load_identity(home)  # creates the node's Ed25519 key on first use
    body = {
        "token_id": token.token_id,
        "secret": token.secret,
        "name": name,
        "ssh_public_key": node.ssh_public_key,
        "host_key": local_host_key(),
        "profile": profile if profile is not None else local_profile(),
        "models": models or [],
    }
    with HubClient(token.hub_urls, token.fingerprint) as hub:
        answer = hub.request("POST", "/v1/hub/join", json=body)
    membership = {
        "hub_urls": list(token.hub_urls),
        "hub_fingerprint": token.fingerprint,
        "node_id": answer["node_id"],
        "name": answer["name"],
        "node_secret": answer["node_secret"],
        "tunnel_port": answer["tunnel_port"],
        "hub_ssh": answer["hub_ssh"],
        "heartbeat_interval": answer["heartbeat_interval"],
        "node_key": str(node.ssh_private_key_path),
        "joined_at": time.time(),
    }
    write_atomic(fleet_path(home), (json.dumps(membership, indent=2) + "\n").encode(), mode=0o600)
    return membership
