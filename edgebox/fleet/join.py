"""`edgebox join`: register this box with a hub using a pasted token; `rejoin`: re-register it.

Order matters: the token is parsed, the hub's certificate is checked against the pinned
fingerprint in the TLS handshake, and only then is the secret sent. The hub's answer (node id,
node secret, tunnel port, hub SSH address) is saved to EDGEBOX_HOME/fleet.json, mode 0600.

A token only ever makes a new node. A box whose key the hub already has (it joined before)
re-registers instead, by a statement signed with its key (fleet/proof.py): `join` does this by
itself when the hub answers 409 `key_registered`, and `rejoin(rotate=True)` also replaces the
node's key with a new one, signed by both.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgebox.api.blob_grant import GrantVerifier
from edgebox.fleet import proof, tokens
from edgebox.fleet._files import write_atomic
from edgebox.fleet.hub.client import HubClient, HubError
from edgebox.fleet.identity import IdentityError, NodeIdentity, edgebox_home, load_identity

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
    user_keys: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Join the hub the token names; returns what was saved to fleet.json (with the secret
    and the node's API key). `user_keys` is where hub users' SSH keys go (fleet/user_keys.py;
    None keeps them out)."""
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
        try:
            answer = hub.request("POST", "/v1/hub/join", json=body)
        except HubError as exc:
            if exc.code != "key_registered":
                raise
            # This box is that node already: prove it, rather than spend the token.
            answer = _rejoin_request(hub, node, token.fingerprint, None)
    return _save(answer, list(token.hub_urls), token.fingerprint, node, home, user_keys)


def rejoin(*, home: Path | None = None, rotate: bool = False) -> dict[str, Any]:
    """Re-register this box with the hub in fleet.json, signed by its key: a new node secret,
    the same node id and tunnel port. With `rotate`, the node key and the node's API key are
    replaced by new ones."""
    home = home or edgebox_home()
    fleet = load_fleet(home)
    if fleet is None:
        raise HubError(0, "not_joined", f"this box has not joined a hub ({fleet_path(home)})")
    node = load_identity(home)
    staged = node.ssh_private_key_path.with_name("id_ed25519.next")
    new = Ed25519PrivateKey.generate() if rotate else None
    if new is not None:  # on disk before the hub knows it, so a crash cannot lose both
        write_atomic(staged, _pem(new), mode=0o600)
    with HubClient(fleet["hub_urls"], fleet["hub_fingerprint"]) as hub:
        try:
            answer = _rejoin_request(hub, node, fleet["hub_fingerprint"], new)
        except HubError:
            staged.unlink(missing_ok=True)
            raise
    if new is not None:
        public = proof.public_line(new) + " " + node.ssh_public_key.split(" ", 2)[-1]
        staged.replace(node.ssh_private_key_path)
        write_atomic(node.ssh_private_key_path.with_suffix(".pub"), (public + "\n").encode())
        node = load_identity(home)
    urls, fingerprint = list(fleet["hub_urls"]), fleet["hub_fingerprint"]
    return _save(answer, urls, fingerprint, node, home, fleet.get("user_keys"))


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def _rejoin_request(
    hub: HubClient, node: NodeIdentity, fingerprint: str, new: Ed25519PrivateKey | None
) -> dict[str, Any]:
    key = serialization.load_ssh_private_key(node.ssh_private_key_path.read_bytes(), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{node.ssh_private_key_path} is not an Ed25519 key")
    body = proof.signed_request(key, hub=fingerprint, host_key=local_host_key(), new=new)
    answer: dict[str, Any] = hub.request("POST", "/v1/hub/rejoin", json=body)
    return answer


def member_api_key(home: Path | None = None) -> str | None:
    """The API key the hub minted for this node at join (None when not joined, or joined to
    an older hub that mints none)."""
    fleet = load_fleet(home)
    key = fleet.get("api_key") if fleet else None
    return str(key) if key else None


def blob_grant_verifier(home: Path | None = None) -> GrantVerifier | None:
    """What this node checks peers' blob grants against (None when not joined): its hub's
    fingerprint and public key, and its own node id as the audience."""
    fleet = load_fleet(home)
    if fleet is None:
        return None
    hub_key = fleet.get("hub_key")
    return GrantVerifier(
        hub=str(fleet["hub_fingerprint"]),
        audience=str(fleet["node_id"]),
        hub_key=hub_key if isinstance(hub_key, str) and hub_key else None,
    )


def _save(
    answer: dict[str, Any],
    urls: list[str],
    fingerprint: str,
    node: NodeIdentity,
    home: Path,
    user_keys: dict[str, str] | None,
) -> dict[str, Any]:
    membership = {
        "hub_urls": urls,
        "hub_fingerprint": fingerprint,
        "node_id": answer["node_id"],
        "name": answer["name"],
        "node_secret": answer["node_secret"],
        "tunnel_port": answer["tunnel_port"],
        "hub_ssh": answer["hub_ssh"],
        "heartbeat_interval": answer["heartbeat_interval"],
        "node_key": str(node.ssh_private_key_path),
        "api_key": answer.get("api_key"),  # this node's /v1 key for the fleet's routers
        "hub_key": answer.get("hub_key"),  # checks peers' blob grants (api/blob_grant.py)
        "user_keys": user_keys,
        "joined_at": time.time(),
    }
    write_atomic(fleet_path(home), (json.dumps(membership, indent=2) + "\n").encode(), mode=0o600)
    return membership
