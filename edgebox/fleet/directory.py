"""The laptop's copy of the fleet: `edgebox login` stores a user login, `edgebox fleet sync`
(and every `edgebox ssh`) pulls the node list from the hub and writes
EDGEBOX_HOME/fleet_nodes.json, the file `provisioning/ssh_config.FileNodeDirectory` reads.

`directory_document` is pure; `sync` does the I/O (pinned HTTPS to the hub, optional mDNS).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgebox.fleet import logins
from edgebox.fleet._files import write_atomic
from edgebox.fleet.advert import DiscoveredNode
from edgebox.fleet.identity import edgebox_home, ssh_fingerprint

LOGIN_FILE = "hub_login.json"
DIRECTORY_FILE = "fleet_nodes.json"


class SyncError(Exception):
    """The node list could not be refreshed; the message says why (never the token)."""


class NoRelay(SyncError):
    """The hub runs no SSH relay: a login still reads the registry (routers, `top`), but
    `edgebox ssh` has no way through it."""


def save_login(login: logins.Login, home: Path | None = None) -> Path:
    path = (home or edgebox_home()) / LOGIN_FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {
        "hub_urls": list(login.hub_urls),
        "fingerprint": login.fingerprint,
        "token": login.token,
    }
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o600)
    return path


def load_login(home: Path | None = None) -> logins.Login | None:
    path = (home or edgebox_home()) / LOGIN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return logins.Login(tuple(data["hub_urls"]), data["fingerprint"], data["token"])
    except (ValueError, KeyError, TypeError):
        raise SyncError(f"{path} is damaged; run `edgebox login` again") from None


def _fingerprint(host_key: str) -> str | None:
    try:
        return ssh_fingerprint(host_key)
    except ValueError:
        return None


def directory_document(
    answer: dict[str, Any],
    discovered: Iterable[DiscoveredNode] = (),
    previous: dict[str, Any] | None = None,
    node_user: str = "root",
) -> dict[str, Any]:
    """GET /v1/hub/nodes → the fleet_nodes.json document. Nodes revoked or without a pinned
    sshd host key are left out (they cannot be reached safely). LAN hints are the addresses of
    mDNS records whose host-key fingerprint equals the registry's; without a fresh one a
    node keeps the hints of the previous document."""
    relay = answer.get("relay") or {}
    if not relay.get("host_key"):
        raise NoRelay(
            "the hub runs no SSH relay (it hands out no relay host key); "
            "start it with `edgebox hub serve --relay`"
        )
    by_fp: dict[str, list[str]] = {}
    for seen in discovered:
        by_fp.setdefault(seen.host_key_fingerprint, []).extend(seen.addresses)
    old = {n.get("id"): n for n in (previous or {}).get("nodes", []) if isinstance(n, dict)}
    nodes = []
    for n in answer.get("data", []):
        if n.get("status") == "revoked" or not n.get("host_key"):
            continue
        fp = _fingerprint(n["host_key"])
        hints = by_fp.get(fp or "") or old.get(n["id"], {}).get("lan_addresses", [])
        nodes.append(
            {
                "name": n["name"],
                "id": n["id"],
                "host_key": n["host_key"],
                "tunnel_port": n["tunnel_port"],
                "lan_addresses": list(hints),
                # the account the node installs hub users' keys for, when it says
                "user": n.get("ssh_user") or node_user,
                "status": n.get("status"),
            }
        )
    hub = {
        "host": relay["host"],
        "port": relay["port"],
        "user": relay["jump_user"],
        "host_key": relay["host_key"],
    }
    return {"hub": hub, "nodes": nodes}


def _discover(wait: float) -> list[DiscoveredNode]:
    import asyncio

    from edgebox.fleet.mdns import discover

    try:
        return asyncio.run(discover(wait))
    except Exception:  # mDNS is a hint: no usable interface must not fail the sync
        return []


def sync(
    home: Path | None = None, *, mdns_wait: float = 0.0, node_user: str = "root"
) -> dict[str, Any]:
    """Pull the node list with the stored login and rewrite fleet_nodes.json; returns it."""
    from edgebox.fleet.hub.client import HubClient, HubError

    home = home or edgebox_home()
    login = load_login(home)
    if login is None:
        raise SyncError(
            f"not logged in to a hub ({home / LOGIN_FILE} is missing); "
            "run the `edgebox login ebu1_...` line your hub admin gave you"
        )
    try:
        with HubClient(login.hub_urls, login.fingerprint, bearer=login.token) as hub:
            answer = hub.request("GET", "/v1/hub/nodes")
    except HubError as exc:
        raise SyncError(f"cannot refresh the node list: {exc.message}") from None
    path = home / DIRECTORY_FILE
    try:
        previous = json.loads(path.read_text()) if path.exists() else None
    except ValueError:
        previous = None
    discovered = _discover(mdns_wait) if mdns_wait > 0 else []
    document = directory_document(answer, discovered, previous, node_user)
    write_atomic(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)
    return document
